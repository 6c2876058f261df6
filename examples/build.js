// Compiles every top-level src/*.mo into <name>.wasm and <name>.did with the Motoko
// compiler from the npm package `motoko` (pinned in build.sh; 4.x emits 64-bit
// Wasm with enhanced orthogonal persistence by default, no flags needed).
// Motoko 4 no longer bundles `base`: the package ships `packages/latest/core.json`
// (the `core` library), so the sources import "mo:core/...".
// Files in subdirectories (src/lib/...) are not compiled on their own: they are
// loaded into the compiler's virtual file system so the top-level actors can import
// them (e.g. factory64.mo imports the actor class src/lib/Child.mo).
// Build order matters: the compiler keeps counters for generated names across
// calls in one process, so a module's bytes depend on which files were compiled
// before it. ORDER below is append-only: the files are compiled in one process in
// that order (then any unlisted file, sorted), so adding an example at the end never
// changes the bytes of the ones before it.
// Fails if the installed package is not the pinned version, if a source does not
// compile, or if an output is not a memory64 module.
const fs = require('fs');
const path = require('path');
const mo = require('motoko');
const pkgVersion = require('motoko/package.json').version;
mo.loadPackage(require('motoko/packages/latest/core.json'));

// Append new examples at the end; never reorder (see above).
const ORDER = ['compute64', 'counter64', 'kv64', 'stable64', 'traps64', 'composite64', 'factory64', 'lowmem64', 'status64', 'heap64'];

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

// Load the .mo files under subdirectories of src/ (the top-level ones are loaded
// just before they are compiled), under their paths relative to src/.
function loadTree(dir, rel) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const r = rel + '/' + e.name;
    if (e.isDirectory()) loadTree(path.join(dir, e.name), r);
    else if (e.name.endsWith('.mo')) mo.write(r, fs.readFileSync(path.join(dir, e.name), 'utf8'));
  }
}
for (const e of fs.readdirSync(srcDir, { withFileTypes: true })) {
  if (e.isDirectory()) loadTree(path.join(srcDir, e.name), e.name);
}

const top = fs.readdirSync(srcDir, { withFileTypes: true })
  .filter(e => e.isFile() && e.name.endsWith('.mo')).map(e => path.basename(e.name, '.mo'));
const order = ORDER.filter(n => top.includes(n)).concat(top.filter(n => !ORDER.includes(n)).sort());

let failed = 0;
for (const name of order) {
  const file = name + '.mo';
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
