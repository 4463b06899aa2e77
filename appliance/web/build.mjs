// Build the web client into appliance/src/tongxin/web/ (served by the node at / and /static/).
//
// 1. protobufjs-cli generates static encode/decode code from the payload
//    contracts, appliance/src/tongxin/proto/tongxin.proto and e2ee.proto, into
//    build/ (not committed);
// 2. esbuild bundles src/main.js with it, protobufjs/minimal, fzstd,
//    @noble/hashes and sm-crypto-v2 into app.js, and minifies style.css;
// 3. index.html is copied with a content hash on its asset URLs so a new
//    build is never mixed with a cached old one.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const protoDir = join(here, "..", "src", "tongxin", "proto");
// tongxin.proto (frames) and e2ee.proto (key directory and envelope, docs/e2ee.md).
const protos = ["tongxin.proto", "e2ee.proto"].map((f) => join(protoDir, f));
const gen = join(here, "build");
const out = join(here, "..", "src", "tongxin", "web");

mkdirSync(gen, { recursive: true });
const pbjs = join(dirname(require.resolve("protobufjs-cli/package.json")), "bin", "pbjs");
execFileSync(process.execPath, [
  pbjs, "-t", "static-module", "-w", "esm", "--force-number",
  "--no-comments", "--no-verify", "--no-convert", "--no-delimited", "--no-typeurl", "--no-service",
  "-o", join(gen, "tongxin_pb.js"), ...protos,
], { stdio: "inherit" });

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

// protobufjs picks up the `long` package for 64-bit fields when it can load
// it; the generated code is forced to plain numbers, so leave it out.
const noLong = {
  name: "no-long",
  setup(b) {
    b.onResolve({ filter: /^long$/ }, () => ({ path: "long", namespace: "no-long" }));
    b.onLoad({ filter: /.*/, namespace: "no-long" }, () => ({ contents: "module.exports = null;", loader: "js" }));
  },
};

const js = await esbuild.build({
  entryPoints: [join(here, "src", "main.js")],
  bundle: true,
  format: "esm",
  target: ["chrome110", "firefox115", "safari16"],
  minify: true,
  sourcemap: true,
  legalComments: "linked",
  // Error class names (TamperedError, ...) are part of how E2EE failures are told apart.
  keepNames: true,
  outfile: join(out, "app.js"),
  plugins: [noLong],
  metafile: true,
  logLevel: "warning",
});
await esbuild.build({
  entryPoints: [join(here, "style.css")],
  bundle: true,
  minify: true,
  outfile: join(out, "style.css"),
  logLevel: "warning",
});

const hashOf = (file) => createHash("sha256").update(readFileSync(join(out, file))).digest("hex").slice(0, 12);
const html = readFileSync(join(here, "index.html"), "utf8")
  .replace('/static/app.js"', `/static/app.js?v=${hashOf("app.js")}"`)
  .replace('/static/style.css"', `/static/style.css?v=${hashOf("style.css")}"`);
writeFileSync(join(out, "index.html"), html);

// 4. The administrators' console (src/console/, served at /console/): its own
//    bundle, stylesheet and page, hashed the same way.
await esbuild.build({
  entryPoints: { console: join(here, "src", "console", "main.js") },
  bundle: true,
  format: "esm",
  target: ["chrome110", "firefox115", "safari16"],
  minify: true,
  sourcemap: true,
  legalComments: "linked",
  outdir: out,
  logLevel: "warning",
});
await esbuild.build({
  entryPoints: { console: join(here, "src", "console", "console.css") },
  bundle: true,
  minify: true,
  outdir: out,
  logLevel: "warning",
});
writeFileSync(join(out, "console.html"), readFileSync(join(here, "src", "console", "console.html"), "utf8")
  .replace('/static/console.js"', `/static/console.js?v=${hashOf("console.js")}"`)
  .replace('/static/console.css"', `/static/console.css?v=${hashOf("console.css")}"`));

const bytes = Object.values(js.metafile.outputs).reduce((n, o) => n + (o.bytes || 0), 0);
const appBytes = js.metafile.outputs[Object.keys(js.metafile.outputs).find((k) => k.endsWith("app.js"))].bytes;
console.log(`web client built into ${out} (app.js ${(appBytes / 1024).toFixed(1)} KiB, ${(bytes / 1024).toFixed(0)} KiB with map)`);
