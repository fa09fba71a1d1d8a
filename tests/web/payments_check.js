// Run in the page by tests/web/test_web.py: backend/web/payments.js against
// tests/vectors/payment_authorization.json (the charge section of every vector).
async (vectors) => {
  const p = await import("/web/payments.js");
  const bad = [];
  for (const v of vectors) {
    const c = v.charge;
    if (p.chargeCommitment(c.stationId, c.salt) !== c.chargeCommitment) bad.push("commitment " + v.name);
    if (c.chargeCommitment !== v.typedData.message.chargeCommitment) bad.push("message " + v.name);
    if (p.paymentLink(v.digest, c.salt) !== c.paymentLink) bad.push("link " + v.name);
  }
  const salts = new Set([p.randomSalt(), p.randomSalt()]);
  if (salts.size !== 2) bad.push("randomSalt repeats");
  return { bad, checked: vectors.length };
}
