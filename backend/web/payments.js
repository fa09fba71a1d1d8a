// The wallet side's two payment hashes, exactly as gridpoints_protocol/commitment.py computes
// them (checked against tests/vectors/payment_authorization.json by tests/web):
//   chargeCommitment = keccak256("GridPoints.ChargeCommitment.v1" || stationId || salt)
//   paymentLink      = keccak256("GridPoints.PaymentLink.v1" || authorisation digest || salt)
// The authorisation the wallet signs carries the charge commitment instead of the station, so
// the chain never sees a station next to the wallet; the salt travels privately to the station.
import { concat, getBytes, hexlify, keccak256, toUtf8Bytes } from "./vendor/ethers.js";

const CHARGE_TAG = toUtf8Bytes("GridPoints.ChargeCommitment.v1");
const LINK_TAG = toUtf8Bytes("GridPoints.PaymentLink.v1");

function word(value, what) {
  const bytes = getBytes(value);
  if (bytes.length !== 32) throw new Error(`${what} must be 32 bytes`);
  return bytes;
}

/** A fresh 32-byte salt (0x-hex) from the browser's CSPRNG; never zero. */
export function randomSalt() {
  for (;;) {
    const bytes = crypto.getRandomValues(new Uint8Array(32));
    if (bytes.some((b) => b !== 0)) return hexlify(bytes);
  }
}

/** keccak256("GridPoints.ChargeCommitment.v1" || stationId || salt) */
export function chargeCommitment(stationId, salt) {
  return keccak256(concat([CHARGE_TAG, word(stationId, "stationId"), word(salt, "salt")]));
}

/** keccak256("GridPoints.PaymentLink.v1" || digest || salt) */
export function paymentLink(digest, salt) {
  return keccak256(concat([LINK_TAG, word(digest, "digest"), word(salt, "salt")]));
}
