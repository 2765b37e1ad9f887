// Preloaded with NODE_OPTIONS=--require: js-ipfs 0.66.1's dependencies call Promise.withResolvers,
// which Node gained in v22.
if (typeof Promise.withResolvers !== "function") {
  Promise.withResolvers = function withResolvers() {
    let resolve;
    let reject;
    const promise = new this((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}
