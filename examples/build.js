// Compiles every src/*.mo into <name>.wasm and <name>.did with the Motoko
// compiler from the npm package `motoko` (pinned in build.sh; 4.x emits 64-bit
// Wasm with enhanced orthogonal persistence by default, no flags needed).
// Motoko 4 no longer bundles `base`: the package ships `packages/latest/core.json`
// (the `core` library), so the sources import "mo:core/...".
// Fails if the installed package is not the pinned version, if a source does not
// compile, or if an output is not a memory64 module.
const fs = require('fs');
const path = require('path');
const mo = require('motoko');
const pkgVersion = require('motoko/package.json').version;
mo.loadPackage(require('motoko/packages/latest/core.json'));

const srcDir = path.join(__dirname, 'src');
const outDir = process.argv[2] || __dirname;
const want = process.argv[3];
if (want && pkgVersion !== want) {
  console.log(`FAIL motoko@${pkgVersion} installed, build.sh pins ${want}`);
  process.exit(1);
}

// Flags byte of the first memory in the Memory section (id 5); bit 0x04 = memory64.
function memoryFlags(wasm) {
  const leb = () => { let r = 0, s = 0, b; do { b = wasm[p++]; r += (b & 0x7f) * 2 ** s; s += 7; } while (b & 0x80); return r; };
  let p = 8;
  while (p < wasm.length) {
    const id = wasm[p++];
    const size = leb();
    if (id === 5) { leb(); return wasm[p]; }
    p += size;
  }
  return undefined;
}

let failed = 0;
for (const file of fs.readdirSync(srcDir).filter(f => f.endsWith('.mo')).sort()) {
  const name = path.basename(file, '.mo');
  mo.write(file, fs.readFileSync(path.join(srcDir, file), 'utf8'));
  try {
    for (const d of mo.check(file)) {
      if (d.severity !== 1) console.log(`  warning ${file}:${d.range.start.line + 1}: ${d.message}`);
    }
    const out = mo.wasm(file, 'ic');
    const flags = memoryFlags(out.wasm);
    if (flags === undefined || !(flags & 0x04)) throw new Error(`not a memory64 module (memory flags ${flags})`);
    fs.writeFileSync(path.join(outDir, name + '.wasm'), out.wasm);
    fs.writeFileSync(path.join(outDir, name + '.did'), out.candid);
    console.log(`ok   ${name}.wasm ${out.wasm.length} bytes (motoko@${pkgVersion}, memory64)`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${String(e.message).split('\n').slice(0, 6).join('\n  ')}`);
  }
}
process.exit(failed ? 1 : 0);
