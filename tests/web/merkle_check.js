// Run in the page by tests/web/test_web.py: backend/web/merkle.js against tests/vectors/merkle.json.
async (v) => {
  const m = await import("/web/merkle.js");
  const bad = [];
  if (m.EMPTY_ROOT !== v.emptyRoot || m.root([]) !== v.emptyRoot) bad.push("empty root");
  for (const x of v.leaves) if (m.hashLeaf(x.data) !== x.leafHash) bad.push("leaf " + x.data);
  for (const x of v.nodes) if (m.hashNode(x.left, x.right) !== x.hash) bad.push("node " + x.hash);
  for (const x of v.recordLeaves) {
    if (m.recordLeafHash(x.digest, x.signature) !== x.leafHash) bad.push("record leaf " + x.digest);
  }
  const trees = {};
  for (const x of v.inclusion) {
    const tag = `size ${x.treeSize} index ${x.index}`;
    (trees[x.treeSize] ||= { root: x.root, leaves: [] }).leaves[x.index] = x.leafHash;
    if (m.rootFromInclusionProof(x.leafHash, x.index, x.treeSize, x.path) !== x.root) bad.push("path " + tag);
    if (!m.verifyInclusion(x.leafHash, x.index, x.treeSize, x.path, x.root)) bad.push("verify " + tag);
    if (x.treeSize > 1 && m.verifyInclusion(x.leafHash, (x.index + 1) % x.treeSize, x.treeSize, x.path, x.root)) {
      bad.push("other index passes " + tag);
    }
  }
  for (const [size, t] of Object.entries(trees)) if (m.root(t.leaves) !== t.root) bad.push("root of " + size);
  return { bad, checked: v.inclusion.length };

}
