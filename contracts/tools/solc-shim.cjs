#!/usr/bin/env node
// A native-solc command line over solc-js, so that Forge can compile fully offline with the
// compiler that npm installed (node_modules/solc). Forge needs only two forms:
//
//   solc --version
//   solc [--base-path DIR] [--include-path DIR]... [--allow-paths A,B] --standard-json [FILE]
//
// Standard JSON is read from FILE or stdin and the output JSON written to stdout, exactly as the
// native binary does: compiler errors travel inside the JSON (Forge reports them) and the exit
// code is 0. Anything the shim itself cannot do — an unknown option, unreadable input, a solc-js
// crash, an import outside the allowed paths — is reported on stderr with exit code 1 or 2.
"use strict";
const fs = require("fs");
const path = require("path");

function die(code, message) {
  process.stderr.write(`solc-shim: ${message}\n`);
  process.exit(code);
}

function parseArgs(argv) {
  const opts = { basePath: null, includePaths: [], allowPaths: [], mode: null, inputFile: null };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) die(2, `option ${arg} needs a value`);
      return argv[++i];
    };
    switch (arg) {
      case "--version":
        opts.mode = "version";
        break;
      case "--standard-json":
        opts.mode = "standard-json";
        break;
      case "--base-path":
        opts.basePath = path.resolve(value());
        break;
      case "--include-path":
        opts.includePaths.push(path.resolve(value()));
        break;
      case "--allow-paths":
        for (const p of value().split(",")) if (p) opts.allowPaths.push(path.resolve(p));
        break;
      default:
        if (arg.startsWith("-")) die(2, `unsupported option ${arg} (only --version and --standard-json are implemented)`);
        if (opts.inputFile !== null) die(2, `more than one input file: ${opts.inputFile}, ${arg}`);
        opts.inputFile = arg;
    }
  }
  if (opts.mode === null) die(2, "nothing to do: pass --version or --standard-json");
  return opts;
}

function loadSolc() {
  try {
    return require("solc");
  } catch (err) {
    die(1, `cannot load solc-js (run \`npm ci\` at the repository root): ${err.message}`);
  }
}

function isInside(file, dir) {
  const rel = path.relative(dir, file);
  return rel === "" || (!rel.startsWith("..") && !path.isAbsolute(rel));
}

// Mirrors solc's import callback: a source unit name is looked up under the base path and then
// each include path; absolute names are used as they are. Reads are confined to the base path,
// the include paths and the allowed paths.
function makeImportCallback(opts) {
  const roots = [opts.basePath ?? process.cwd(), ...opts.includePaths];
  const allowed = [...roots, ...opts.allowPaths];
  return (sourceUnitName) => {
    const candidates = path.isAbsolute(sourceUnitName)
      ? [sourceUnitName]
      : roots.map((root) => path.resolve(root, sourceUnitName));
    for (const candidate of candidates) {
      if (!allowed.some((dir) => isInside(candidate, dir))) continue;
      if (fs.existsSync(candidate)) return { contents: fs.readFileSync(candidate, "utf8") };
    }
    return { error: `File not found inside the allowed paths: ${sourceUnitName}` };
  };
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const solc = loadSolc();
  if (opts.mode === "version") {
    // Forge parses the "Version:" line; solc-js reports e.g. 0.8.30+commit.73712a01.Emscripten.clang
    process.stdout.write(`solc, the solidity compiler commandline interface\nVersion: ${solc.version()}\n`);
    return;
  }
  let input;
  try {
    input = fs.readFileSync(opts.inputFile ?? 0, "utf8");
  } catch (err) {
    die(1, `cannot read the standard JSON input: ${err.message}`);
  }
  try {
    JSON.parse(input);
  } catch (err) {
    die(1, `standard JSON input is not valid JSON: ${err.message}`);
  }
  let output;
  try {
    output = solc.compile(input, { import: makeImportCallback(opts) });
  } catch (err) {
    die(1, `solc-js crashed: ${err.stack || err}`);
  }
  const parsed = JSON.parse(output);
  const fatal = (parsed.errors || []).filter((e) => e.severity === "error");
  for (const e of fatal) process.stderr.write(`solc-shim: ${e.formattedMessage || e.message}\n`);
  process.stdout.write(output);
}

main();
