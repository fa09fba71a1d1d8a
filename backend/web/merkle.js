// The one Merkle tree of GridPoints in JavaScript: RFC 9162 shape with keccak-256, exactly as
// gridpoints_protocol/merkle.py (and contracts/src/MerkleLog.sol):
//   leaf = keccak256(0x00 || data), node = keccak256(0x01 || left || right),
//   a tree of n leaves splits at the largest power of two below n.
// Checked against tests/vectors/merkle.json in a real browser (tests/web/test_web.py).
// Hashes are 0x-hex strings; indices and sizes are BigInt inside (no 32-bit bit operations).
import { concat, getBytes, hexlify, keccak256 } from "./vendor/ethers.js";

export const EMPTY_ROOT = keccak256(new Uint8Array(0));
const LEAF_PREFIX = new Uint8Array([0]);
const NODE_PREFIX = new Uint8Array([1]);

function hash32(value, what) {
  const bytes = getBytes(value);
  if (bytes.length !== 32) throw new Error(`${what} must be 32 bytes, got ${bytes.length}`);
  return bytes;
}

/** keccak256(0x00 || data) */
export function hashLeaf(data) {
  return keccak256(concat([LEAF_PREFIX, getBytes(data)]));
}

/** keccak256(0x01 || left || right) */
export function hashNode(left, right) {
  return keccak256(concat([NODE_PREFIX, hash32(left, "left"), hash32(right, "right")]));
}

/** Leaf of a record in an epoch's records tree: hashLeaf(digest || signature). */
export function recordLeafHash(digest, signature) {
  const d = getBytes(digest);
  const s = getBytes(signature);
  if (d.length !== 32) throw new Error(`record digest must be 32 bytes, got ${d.length}`);
  if (s.length !== 65) throw new Error(`signature must be 65 bytes, got ${s.length}`);
  return hashLeaf(concat([d, s]));
}

/** Root of the tree over already hashed leaves (the compact-range fold of merkle.RootBuilder). */
export function root(leafHashes) {
  const stack = []; // [size, hash] of perfect subtrees, leftmost first
  for (const leaf of leafHashes) {
    let size = 1;
    let node = hexlify(hash32(leaf, "leaf hash"));
    while (stack.length && stack[stack.length - 1][0] === size) {
      const [leftSize, left] = stack.pop();
      size += leftSize;
      node = hashNode(left, node);
    }
    stack.push([size, node]);
  }
  if (!stack.length) return EMPTY_ROOT;
  let node = stack[stack.length - 1][1];
  for (let i = stack.length - 2; i >= 0; i--) node = hashNode(stack[i][1], node);
  return node;
}

/** The root an audit path implies (RFC 9162 section 2.1.3.2); null if the path is malformed. */
export function rootFromInclusionProof(leafHash, index, size, proof) {
  let node = hexlify(hash32(leafHash, "leaf hash"));
  let fn = BigInt(index);
  let sn = BigInt(size) - 1n;
  if (fn < 0n || sn < 0n || fn > sn) return null;
  for (const sibling of proof) {
    const s = hash32(sibling, "proof element");
    if (sn === 0n) return null;
    if ((fn & 1n) === 1n || fn === sn) {
      node = hashNode(s, node);
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      node = hashNode(node, s);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return sn === 0n ? node : null;
}

/** Whether `proof` shows `leafHash` at `index` in the tree of `size` leaves with `expectedRoot`. */
export function verifyInclusion(leafHash, index, size, proof, expectedRoot) {
  const computed = rootFromInclusionProof(leafHash, index, size, proof);
  return computed !== null && computed.toLowerCase() === String(expectedRoot).toLowerCase();
}
