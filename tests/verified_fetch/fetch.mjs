// Fetch ipfs:// URLs with @helia/verified-fetch from ONE trustless gateway, nothing else:
// no delegated routers, no libp2p, no bitswap. Every block is re-hashed against its CID by
// helia; a response that does not verify fails.
//
//   node fetch.mjs GATEWAY_URL OUT_DIR RESOURCE...
//
// RESOURCE: ipfs://<cid>[/<path>]. Each body is written to OUT_DIR/<n> (n = 0, 1, ...);
// one JSON line per resource is printed: {resource, status, bytes, contentType, file}.
// Exits 1 if any fetch throws or answers other than 200.
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { withHTTP } from '@helia/http'
import { createVerifiedFetch } from '@helia/verified-fetch'
import { createHeliaLight } from 'helia'

const [gateway, outDir, ...resources] = process.argv.slice(2)
if (!gateway || !outDir || resources.length === 0) {
  console.error('usage: node fetch.mjs GATEWAY_URL OUT_DIR ipfs://CID[/PATH]...')
  process.exit(2)
}

const helia = withHTTP(createHeliaLight(), {
  delegatedRouters: [],
  recursiveGateways: [gateway],
  allowInsecure: true, // a loopback test gateway speaks plain HTTP
  allowLocal: true
})
// helia 7.1.15 waits forever when it has no content router besides the fallback one (its
// provider search only ends when a default router finishes): one that knows nothing ends it.
helia.addRouter({ name: 'no-router', async * findProviders () {} })
await helia.start()
const verifiedFetch = await createVerifiedFetch(helia)
let failed = false
try {
  for (const [n, resource] of resources.entries()) {
    const line = { resource }
    try {
      const resp = await verifiedFetch(resource, { signal: AbortSignal.timeout(60_000) })
      const body = new Uint8Array(await resp.arrayBuffer())
      const file = join(outDir, String(n))
      await writeFile(file, body)
      Object.assign(line, {
        status: resp.status,
        bytes: body.length,
        contentType: resp.headers.get('content-type'),
        file
      })
      if (resp.status !== 200) failed = true
    } catch (err) {
      Object.assign(line, { status: 0, error: String(err?.stack ?? err) })
      failed = true
    }
    console.log(JSON.stringify(line))
  }
} finally {
  await verifiedFetch.stop()
  await helia.stop()
}
process.exit(failed ? 1 : 0)
