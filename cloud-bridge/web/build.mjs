// Builds vendor/, the third-party browser code spotter-bridge serves at /static/vendor/: the Amazon
// IVS player as one ES module for the browser, its wasm worker and binary, and hls.js.
//
// The IVS player's npm build is CommonJS and requires Node's `events`; esbuild bundles it with the
// `events` package from npm. Versions come from package-lock.json, so the same lockfile gives the
// same bundle.

import { copyFile, mkdir, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { build } from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.join(here, "vendor");
const modules = path.join(here, "node_modules");

await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });

const entry = path.join(out, ".ivs-entry.js");
await writeFile(
  entry,
  'export { create, isPlayerSupported, PlayerState, PlayerEventType, MetadataEventType, ErrorType } from "amazon-ivs-player";\n',
);
await build({
  entryPoints: [entry],
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2020",
  minify: true,
  legalComments: "eof",
  nodePaths: [modules],
  outfile: path.join(out, "amazon-ivs-player.js"),
  logLevel: "warning",
});
await rm(entry);

const assets = path.join(modules, "amazon-ivs-player", "dist", "assets");
for (const file of ["amazon-ivs-wasmworker.min.js", "amazon-ivs-wasmworker.min.wasm"]) {
  await copyFile(path.join(assets, file), path.join(out, file));
}
await copyFile(path.join(modules, "hls.js", "dist", "hls.min.js"), path.join(out, "hls.min.js"));
console.log(`built ${path.relative(process.cwd(), out) || "."}: amazon-ivs-player.js, its wasm worker and binary, hls.min.js`);
