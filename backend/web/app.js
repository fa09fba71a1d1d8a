// GridPoints web app: "My points" and "Pay with points" for wallet users, "Explorer" for auditors.
// Plain ES module, no build step. It talks to this server's own API (/v1, /web/config.json) and
// to the RPC URL the server names in /web/config.json, nothing else (the CSP enforces it).
// Balances and epoch roots are read from the chain, never taken from the backend's word;
// inclusion proofs are checked here, in the browser, against the root on chain.
import { Contract, JsonRpcProvider, Signature, TypedDataEncoder, concat, getAddress, getBytes, hexlify, keccak256, toUtf8Bytes, verifyTypedData } from "./vendor/ethers.js";
import { recordLeafHash, verifyInclusion } from "./merkle.js";
import { chargeCommitment, paymentLink, randomSalt } from "./payments.js";

// The contracts' ABIs come from /web/config.json (compiled, contracts/out), and so does the payment
// authorisation's EIP-712 definition (the protocol core's): the page holds no copy of either.
const RECORD_TYPES = {
  EnergyTransfer: [
    { name: "stationId", type: "bytes32" },
    { name: "sequence", type: "uint64" },
    { name: "userCommitment", type: "bytes32" },
    { name: "direction", type: "uint8" },
    { name: "energyWh", type: "uint64" },
    { name: "meterBeforeWh", type: "uint64" },
    { name: "meterAfterWh", type: "uint64" },
    { name: "startTime", type: "uint64" },
    { name: "endTime", type: "uint64" },
    { name: "paymentAuthorization", type: "bytes32" },
    { name: "meterEvidence", type: "bytes32" },
  ],
};
// keccak256(tag || user || salt): the record commits to its user; the opening comes only with
// the signed-in views (gridpoints_protocol/commitment.py).
const USER_COMMITMENT_TAG = toUtf8Bytes("GridPoints.UserCommitment.v1");
function userCommitment(opening) {
  return keccak256(concat([USER_COMMITMENT_TAG, getBytes(opening.user), getBytes(opening.salt)]));
}
const DIRECTION = { 1: "Charge (grid to car)", 2: "Discharge (car to grid)" };

const state = {
  config: null,
  rpc: null, // ethers JsonRpcProvider on config.rpcUrl
  token: null,
  settlement: null,
  wallets: new Map(), // uuid -> {info, provider} announced through EIP-6963
  wallet: null, // {provider, name}
  account: null,
  chainId: null,
  epochs: new Map(), // epochId -> epoch view of the API (for transaction hashes)
  tariffs: new Map(), // version -> canonical tariff document
  signInNotice: null, // why the user must sign in again (an ended session), shown once
};

// ---- small helpers --------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const fmt = new Intl.NumberFormat("en-US");
/** "1 record", "2 records": a count with its noun. */
export const count = (n, one, many = `${one}s`) => `${fmt.format(BigInt(n))} ${BigInt(n) === 1n ? one : many}`;
export const points = (n) => `${fmt.format(BigInt(n))} points`;
export const kwh = (wh) =>
  `${(Number(wh) / 1000).toLocaleString("en-US", { minimumFractionDigits: 3, maximumFractionDigits: 3 })} kWh`;
const short = (hex, n = 10) => (hex && hex.length > 2 * n ? `${hex.slice(0, n)}…${hex.slice(-6)}` : hex || "—");
const when = (unix) => new Date(Number(unix) * 1000).toISOString().replace("T", " ").slice(0, 16) + " UTC";
const hexEq = (a, b) => String(a).toLowerCase() === String(b).toLowerCase();

function hash(value, label) {
  return el("code", { class: "hash", title: value || "", "data-label": label }, short(value));
}

async function api(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  if (!response.ok) throw await failure(path, response);
  return parseJson(await response.text());
}

async function failure(path, response) {
  let message = `${response.status} ${response.statusText}`;
  let code;
  try {
    const body = await response.json();
    if (body?.error?.message) message = body.error.message;
    code = body?.error?.code;
  } catch {
    /* not JSON */
  }
  return Object.assign(new Error(`${path}: ${message}`), { code, status: response.status });
}

// The API writes every integer as a JSON number; one above 2^53 - 1 (a 256-bit nonce, a uint64
// meter) would be rounded by JSON.parse, so it is kept as its exact decimal text instead (where
// the browser gives the parser the source text; BigInt() and String() read it either way).
export function parseJson(text) {
  return JSON.parse(text, (_key, value, context) =>
    typeof value === "number" && !Number.isSafeInteger(value) && context?.source && /^-?[0-9]+$/.test(context.source)
      ? context.source
      : value,
  );
}

// ---- sign-in with the wallet (EIP-4361) -------------------------------------------------------
// Private data (the user's records, proofs, authorisations, export) comes from /v1/me/*, which
// answers only with the bearer token of a session the wallet opened by signing the backend's
// EIP-4361 challenge (personal_sign). The token is kept in sessionStorage, never localStorage:
// it survives a reload of this tab (the wallet need not sign again for each page) but not the
// tab, is not shared with other tabs, and is dropped on sign-out, on an account change and on
// the server's 401. (Memory alone would ask for a signature on every reload; localStorage would
// keep a bearer token on the device after the tab is closed.)

class SessionEnded extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

const SESSION_ENDED = {
  session_expired: "Your session has expired. Sign in again to see your records.",
  unknown_session: "Your session has ended (signed out, or unknown to the server). Sign in again to see your records.",
  missing_token: "Sign in with your wallet to see your records.",
};

function sessionKey() {
  return `gridpoints:session:${state.config.chainId}:${state.config.contracts.Settlement}`.toLowerCase();
}

function dropSession() {
  try {
    sessionStorage.removeItem(sessionKey());
  } catch {
    /* storage disabled: nothing was kept */
  }
}

/** The open session of the connected account, or null (one that ended here is dropped). */
function currentSession() {
  let session = null;
  try {
    session = JSON.parse(sessionStorage.getItem(sessionKey()) || "null");
  } catch {
    return null;
  }
  if (!session?.token || !state.account) return null;
  if (!hexEq(session.address, state.account)) {
    dropSession(); // another account is connected now: its data is not this session's
    return null;
  }
  if (Date.parse(session.expiresAt) <= Date.now()) {
    dropSession();
    state.signInNotice = SESSION_ENDED.session_expired;
    return null;
  }
  return session;
}

async function signIn() {
  const account = state.account;
  const challenge = await apiPost("/v1/auth/challenge", { address: account, chainId: state.config.chainId });
  // The wallet shows the message's text and signs it (EIP-191); it is a signature, not a transaction.
  const signature = await state.wallet.provider.request({
    method: "personal_sign",
    params: [hexlify(toUtf8Bytes(challenge.message)), account],
  });
  const opened = await apiPost("/v1/auth/session", { message: challenge.message, signature });
  if (!hexEq(opened.address, account)) throw new Error(`the backend signed in ${opened.address}, not ${account}`);
  state.signInNotice = null;
  try {
    sessionStorage.setItem(sessionKey(), JSON.stringify({ token: opened.token, address: opened.address, expiresAt: opened.expiresAt }));
  } catch {
    throw new Error("this browser refuses to keep the session for this tab (sessionStorage is disabled)");
  }
}

async function signOut() {
  const session = currentSession();
  dropSession();
  if (session) {
    // The server forgets the token too; one it no longer knows (401) is signed out already.
    const response = await fetch("/v1/auth/session", { method: "DELETE", headers: { Authorization: `Bearer ${session.token}` } });
    if (!response.ok && response.status !== 401) throw await failure("/v1/auth/session", response);
  }
}

/** A signed-in view of /v1/me: parsed JSON, or the text as it came (`raw`). A 401 ends the
 * session here too and throws SessionEnded with the server's reason. */
async function privateApi(path, { raw = false } = {}) {
  const session = currentSession();
  if (!session) throw new SessionEnded("missing_token", SESSION_ENDED.missing_token);
  const response = await fetch(path, { headers: { Accept: "application/json", Authorization: `Bearer ${session.token}` } });
  if (response.status === 401) {
    const error = await failure(path, response);
    dropSession();
    throw new SessionEnded(error.code, SESSION_ENDED[error.code] || SESSION_ENDED.unknown_session);
  }
  if (!response.ok) throw await failure(path, response);
  const text = await response.text();
  return raw ? text : parseJson(text);
}

/** Back to the sign-in card, saying why, when a private request found the session ended. */
function onPrivateError(error, box, what) {
  if (error instanceof SessionEnded) {
    state.signInNotice = error.message;
    renderPoints();
    return;
  }
  box.replaceChildren(errorBox(what, error));
}

function loading(text = "Loading…") {
  return el("p", { class: "loading", role: "status" }, text);
}

function errorBox(what, error) {
  return el("div", { class: "error", role: "alert" }, el("strong", {}, what), " ", String(error?.message || error));
}

function show(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes);
}

// ---- configuration --------------------------------------------------------------------------

async function loadConfig() {
  const config = await api("/web/config.json");
  state.config = config;
  state.rpc = new JsonRpcProvider(config.rpcUrl, config.chainId, { staticNetwork: true });
  state.token = new Contract(config.contracts.PointsToken, config.abi.PointsToken, state.rpc);
  state.settlement = new Contract(config.contracts.Settlement, config.abi.Settlement, state.rpc);
}

// ---- wallets: EIP-6963 discovery, EIP-1193 fallback ------------------------------------------

window.addEventListener("eip6963:announceProvider", (event) => {
  const { info, provider } = event.detail || {};
  if (!info?.uuid || !provider?.request) return;
  state.wallets.set(info.uuid, { info, provider });
  if (!state.account && WALLET_VIEWS.has(currentView())) route();
});

function discoverWallets() {
  window.dispatchEvent(new Event("eip6963:requestProvider"));
}

function walletChoices() {
  const choices = [...state.wallets.values()].map(({ info, provider }) => ({ name: info.name, icon: info.icon, provider }));
  if (!choices.length && window.ethereum?.request) {
    choices.push({ name: "Browser wallet", icon: null, provider: window.ethereum });
  }
  return choices;
}

async function connect(choice) {
  const accounts = await choice.provider.request({ method: "eth_requestAccounts" });
  if (!accounts?.length) throw new Error("the wallet gave no account");
  state.wallet = choice;
  state.account = getAddress(accounts[0]);
  state.chainId = Number(await choice.provider.request({ method: "eth_chainId" }));
  if (choice.provider.on) {
    choice.provider.on("chainChanged", (id) => {
      state.chainId = Number(id);
      route();
    });
    choice.provider.on("accountsChanged", (list) => {
      state.account = list?.length ? getAddress(list[0]) : null;
      renderWalletBadge();
      route();
    });
  }
  renderWalletBadge();
}

async function switchChain() {
  const hexId = "0x" + state.config.chainId.toString(16);
  await state.wallet.provider.request({ method: "wallet_switchEthereumChain", params: [{ chainId: hexId }] });
  state.chainId = Number(await state.wallet.provider.request({ method: "eth_chainId" }));
}

function renderWalletBadge() {
  const badge = document.getElementById("wallet");
  badge.replaceChildren(
    state.account ? el("span", { class: "account", title: state.account }, `${state.wallet.name}: ${short(state.account, 6)}`) : "",
  );
}

// ---- My points ------------------------------------------------------------------------------

async function renderPoints() {
  if (!state.account) return renderConnect();
  if (state.chainId !== state.config.chainId) return renderWrongChain();
  const user = state.account;
  const section = el("section", { "aria-labelledby": "points-title" }, el("h1", { id: "points-title" }, "My points"));
  const balanceBox = el("div", { class: "card balance", id: "balance" }, loading("Reading your balance from the chain…"));
  const session = currentSession();
  section.append(el("p", { class: "muted" }, "Wallet ", el("code", { id: "account" }, user)), balanceBox);
  show(section);
  readBalance(user, balanceBox);
  if (!session) {
    section.append(signInCard());
    return;
  }
  const historyBox = el("div", { id: "history" }, loading("Loading your records…"));
  const authBox = el("div", { id: "authorizations-box" }, loading("Loading your payment authorisations…"));
  section.append(
    sessionBar(session),
    historyBox,
    el("h2", { id: "authorizations-title" }, "Payment authorisations"),
    el("p", { class: "muted" }, "To pay for a charge with points, open the link or scan the code the charging station shows: it brings you to the page where you sign. Listed here: what you signed in this browser, what the backend holds for you (sent to a station, or attached to your records)."),
    authBox,
  );

  try {
    const [history] = await Promise.all([loadHistory(), loadEpochs(), loadTariffs()]);
    historyBox.replaceChildren(...historyTables(history));
    try {
      authBox.replaceChildren(await authorizationsTable(user, history, await loadMyAuthorizations()));
    } catch (error) {
      onPrivateError(error, authBox, "Could not list your payment authorisations:");
    }
  } catch (error) {
    onPrivateError(error, historyBox, "Could not load your records:");
    authBox.replaceChildren();
  }
}

function readBalance(user, balanceBox) {
  state.token
    .balanceOf(user)
    .then((balance) => {
      balanceBox.replaceChildren(
        el("div", { class: "label" }, "Balance (PointsToken.balanceOf on chain)"),
        el("div", { class: "big", id: "balance-value", "data-points": balance.toString() }, points(balance)),
      );
    })
    .catch((error) => balanceBox.replaceChildren(errorBox("Could not read the balance from the chain:", error)));
}

function signInCard() {
  const status = el("p", { role: "status", class: "muted" });
  const notice = state.signInNotice;
  return el(
    "div",
    { class: "card", id: "signin" },
    el("h2", {}, "Sign in to see your records"),
    notice ? el("p", { class: "notice", role: "alert", id: "signin-notice" }, notice) : null,
    el(
      "p",
      {},
      "Your records, their proofs and your payment authorisations are private: the backend shows them only to the wallet that signs in. Signing in is a signature of a short text (Sign-In with Ethereum, EIP-4361) in your wallet: no transaction, no fee. The balance above needs no sign-in: it is read from the chain.",
    ),
    el(
      "button",
      {
        class: "button",
        type: "button",
        id: "sign-in",
        onclick: async (event) => {
          event.currentTarget.disabled = true;
          status.textContent = `Asking ${state.wallet.name} to sign the sign-in message…`;
          try {
            await signIn();
            await renderPoints();
          } catch (error) {
            document.getElementById("sign-in").disabled = false;
            status.replaceChildren(errorBox("Not signed in:", error?.code === 4001 ? "you declined in your wallet." : error));
          }
        },
      },
      `Sign in with ${state.wallet.name}`,
    ),
    status,
  );
}

function sessionBar(session) {
  const status = el("p", { role: "status", class: "muted", id: "session-status" });
  const file = `gridpoints-export-${state.account}.json`;
  return el(
    "div",
    { class: "card session", id: "session" },
    el("p", {}, "Signed in until ", el("span", { id: "session-until" }, session.expiresAt.replace("T", " ").slice(0, 16) + " UTC"), ". Only this tab keeps the session."),
    el(
      "div",
      { class: "choices" },
      el(
        "button",
        {
          class: "button",
          type: "button",
          id: "download-export",
          onclick: async () => {
            status.textContent = "Preparing your data…";
            try {
              const text = await privateApi("/v1/me/export", { raw: true });
              const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
              const link = el("a", { href: url, download: file, hidden: true });
              document.body.append(link);
              link.click();
              link.remove();
              setTimeout(() => URL.revokeObjectURL(url), 60_000);
              status.textContent = `Saved as ${file}.`;
            } catch (error) {
              onPrivateError(error, status, "Could not download your data:");
            }
          },
        },
        "Download my data",
      ),
      el(
        "button",
        {
          class: "button secondary",
          type: "button",
          id: "sign-out",
          onclick: async () => {
            try {
              await signOut();
            } catch (error) {
              status.replaceChildren(errorBox("The server did not confirm the sign-out (this tab forgot the session):", error));
              return;
            }
            await renderPoints();
          },
        },
        "Sign out",
      ),
    ),
    el(
      "p",
      { class: "muted", id: "export-hint" },
      "Check your data yourself, offline from us: ",
      el("code", {}, `gridpoints-audit user ${file} --rpc-url ${state.config.rpcUrl} --deployment deployment.json`),
      " (it checks your records against the roots and mints on chain; docs/AUDIT.md).",
    ),
    status,
  );
}

async function loadTariffs() {
  const list = await api("/v1/tariffs");
  const docs = await Promise.all(list.map((t) => api(`/v1/tariffs/${t.hash}`)));
  for (const doc of docs) state.tariffs.set(doc.version, doc);
}

const WEEKDAY = { Mon: "mon", Tue: "tue", Wed: "wed", Thu: "thu", Fri: "fri", Sat: "sat", Sun: "sun" };
const BAND_STEP_S = 900; // bands change on local hours; quarter hours also cover 30/45-minute offsets
const BAND_MAX_STEPS = 7 * 96;

/** The tariff's band at unix time `t`: the one of the local weekday and hour in its time zone. */
export function bandAt(tariff, t) {
  const parts = new Intl.DateTimeFormat("en-US", {
    timeZone: tariff.timezone,
    weekday: "short",
    hour: "numeric",
    hourCycle: "h23",
  }).formatToParts(new Date(t * 1000));
  const day = WEEKDAY[parts.find((p) => p.type === "weekday").value];
  const hour = Number(parts.find((p) => p.type === "hour").value);
  return tariff.schedule[day][hour];
}

/** The bands a record's interval crosses, in order (its start's band alone when it is empty). */
export function bandsOf(tariff, start, end) {
  const bands = [bandAt(tariff, start)];
  let t = (Math.floor(start / BAND_STEP_S) + 1) * BAND_STEP_S;
  for (let i = 0; t < end && i < BAND_MAX_STEPS; i++, t += BAND_STEP_S) {
    const band = bandAt(tariff, t);
    if (band !== bands[bands.length - 1]) bands.push(band);
  }
  return bands;
}

function bandText(item) {
  const tariff = state.tariffs.get(item.tariffVersion);
  if (!tariff) return item.tariffVersion || "—";
  const r = item.record.record;
  return `${bandsOf(tariff, r.startTime, r.endTime).join(" → ")} (${item.tariffVersion})`;
}

async function loadHistory() {
  const history = [];
  let after = -1;
  for (;;) {
    const page = await privateApi(`/v1/me/records?afterLogIndex=${after}&limit=1000`);
    history.push(...page.records);
    if (page.nextAfterLogIndex === null) return history;
    after = page.nextAfterLogIndex;
  }
}

function renderConnect() {
  const choices = walletChoices();
  if (!choices.length) {
    show(
      el(
        "section",
        { class: "card notice", id: "no-wallet", role: "status" },
        el("h1", {}, "No wallet found"),
        el(
          "p",
          {},
          `To ${currentView() === "pay" ? "pay with your points" : "see your points"}, this page needs an Ethereum wallet in your browser (a browser extension or a wallet app's built-in browser). None announced itself, and there is no window.ethereum provider.`,
        ),
        el("p", {}, "Install a wallet, reload this page, and connect. The Explorer works without a wallet."),
        el("a", { href: "#/explorer", class: "button" }, "Open the Explorer"),
      ),
    );
    return;
  }
  const status = el("p", { role: "status", class: "muted" });
  const buttons = choices.map((choice) =>
    el(
      "button",
      {
        class: "button wallet-choice",
        type: "button",
        onclick: async () => {
          status.textContent = `Asking ${choice.name} for your account…`;
          try {
            await connect(choice);
            await route();
          } catch (error) {
            status.replaceChildren(errorBox("The wallet did not connect:", error));
          }
        },
      },
      choice.icon ? el("img", { src: choice.icon, alt: "", width: 20, height: 20 }) : null,
      `Connect ${choice.name}`,
    ),
  );
  show(
    el(
      "section",
      { class: "card", id: "connect" },
      el("h1", {}, currentView() === "pay" ? "Pay for a charge with points" : "My points"),
      el(
        "p",
        {},
        currentView() === "pay"
          ? "Connect your wallet to read the station's offer against your balance and sign the payment authorisation."
          : "Connect your wallet to see your points balance (read from the chain), your records and their proofs.",
      ),
      el("div", { class: "choices" }, buttons),
      status,
    ),
  );
}

function renderWrongChain() {
  const status = el("p", { role: "status" });
  show(
    el(
      "section",
      { class: "card notice", id: "wrong-chain", role: "alert" },
      el("h1", {}, "Wrong network"),
      el(
        "p",
        {},
        `Your wallet is on chain ${state.chainId}; GridPoints runs on chain ${state.config.chainId}. Switch your wallet to chain ${state.config.chainId} to go on.`,
      ),
      el(
        "button",
        {
          class: "button",
          type: "button",
          id: "switch-chain",
          onclick: async () => {
            status.textContent = "Asking the wallet to switch…";
            try {
              await switchChain();
              await route();
            } catch (error) {
              status.replaceChildren(errorBox("The wallet did not switch:", error));
            }
          },
        },
        `Switch to chain ${state.config.chainId}`,
      ),
      status,
    ),
  );
}

async function loadEpochs() {
  let after = 0;
  for (;;) {
    const page = await api(`/v1/epochs?afterEpochId=${after}&limit=1000`);
    // The list leaves the settlement transactions out; each epoch's own view has them.
    const details = await Promise.all(page.epochs.map((e) => api(`/v1/epochs/${e.epochId}`)));
    for (const epoch of details) state.epochs.set(epoch.epochId, epoch);
    if (page.nextAfterEpochId === null) return [...state.epochs.values()];
    after = page.nextAfterEpochId;
  }
}

function historyTables(history) {
  const pending = history.filter((item) => item.state === "pending");
  const done = history.filter((item) => item.state !== "pending");
  const head = (...names) => el("thead", {}, el("tr", {}, names.map((n) => el("th", { scope: "col" }, n))));
  const rowOf = (item, withEpoch) => {
    const r = item.record.record;
    const epoch = state.epochs.get(item.epochId);
    const pts =
      r.direction === 2
        ? `+${points(item.credited || item.value || 0)}`
        : item.debited !== null && item.debited !== undefined
          ? `−${points(item.debited)}`
          : item.value !== null
            ? `price ${points(item.value)}`
            : "—";
    const cells = [
      el("td", { "data-label": "Ended" }, when(r.endTime)),
      el("td", { "data-label": "Station" }, hash(r.stationId, "station"), ` #${r.sequence}`),
      el("td", { "data-label": "Direction" }, DIRECTION[r.direction] || r.direction),
      el("td", { "data-label": "Energy", class: "num" }, kwh(r.energyWh)),
      el("td", { "data-label": "Tariff band", class: "band" }, bandText(item)),
      el("td", { "data-label": "Points", class: "num" }, pts),
    ];
    if (withEpoch) {
      const verdict = el("span", { class: "verdict", role: "status" });
      cells.push(
        el("td", { "data-label": "Epoch" }, `${item.epochId} (${item.state})`),
        el("td", { "data-label": "Settlement tx" }, hash(epoch?.commitTxHash, "commit tx")),
        el(
          "td",
          { "data-label": "Proof" },
          el(
            "button",
            {
              type: "button",
              class: "button small verify",
              "aria-label": `Verify the inclusion proof of record ${r.sequence} of station ${r.stationId}`,
              onclick: () => verifyRecord(item, verdict),
            },
            "Verify proof",
          ),
          " ",
          verdict,
        ),
      );
    }
    return el("tr", { "data-digest": item.record.digest }, cells);
  };
  const doneTable = done.length
    ? el(
        "table",
        { id: "records" },
        el("caption", {}, `Records in epochs (${done.length})`),
        head("Ended", "Station", "Direction", "Energy", "Tariff band", "Points", "Epoch", "Settlement tx", "Proof"),
        el("tbody", {}, done.map((item) => rowOf(item, true))),
      )
    : el("p", { class: "muted", id: "records-empty" }, "No records in an epoch yet.");
  const pendingTable = pending.length
    ? el(
        "table",
        { id: "pending" },
        el("caption", {}, `Pending: waiting for their epoch (${pending.length})`),
        head("Ended", "Station", "Direction", "Energy", "Tariff band", "Points (estimate)"),
        el("tbody", {}, pending.map((item) => rowOf(item, false))),
      )
    : el("p", { class: "muted", id: "pending-empty" }, "No pending records.");
  return [el("h2", {}, "History"), el("div", { class: "scroll" }, doneTable), el("h2", {}, "Pending"), el("div", { class: "scroll" }, pendingTable)];
}

/** Fetches the record's inclusion proof and checks it here against the root on chain. */
async function verifyRecord(item, verdict) {
  const r = item.record.record;
  verdict.className = "verdict";
  verdict.textContent = "Checking…";
  try {
    // The proof came with the record, from the signed-in view (/v1/me/records).
    const proof = item.proof;
    if (!proof) throw new Error("the backend gave no inclusion proof for this record");
    const reasons = [];
    if (proof.epochId !== item.epochId) reasons.push(`the proof is for epoch ${proof.epochId}, the record is in ${item.epochId}`);
    // The record's digest must be the EIP-712 hash of its fields (recomputed here, under the
    // records' domain).
    const domainOf = {
      name: "GridPoints",
      version: "2",
      chainId: state.config.chainId,
      verifyingContract: state.config.contracts.StationRegistry,
    };
    const digest = TypedDataEncoder.hash(domainOf, RECORD_TYPES, r);
    if (!hexEq(digest, item.record.digest)) reasons.push("the record's digest is not the hash of its fields");
    // The record is this wallet's: its opening hashes to the commitment the station signed.
    if (!item.opening || !hexEq(userCommitment(item.opening), r.userCommitment) || !hexEq(item.opening.user, state.account)) {
      reasons.push("the record's opening does not show it is this wallet's");
    }
    const leaf = recordLeafHash(digest, item.record.signature);
    const onChain = await state.settlement.getEpoch(proof.epochId);
    const chainRoot = onChain.recordsRoot;
    if (BigInt(onChain.committedAt) === 0n) reasons.push(`epoch ${proof.epochId} is not committed on chain yet`);
    if (!verifyInclusion(leaf, proof.leafIndex, proof.treeSize, proof.path, chainRoot)) {
      reasons.push("the audit path does not lead to the records root on chain");
    }
    if (BigInt(onChain.recordCount) !== BigInt(proof.treeSize)) reasons.push("tree size differs from the chain's record count");
    if (reasons.length) {
      verdict.className = "verdict bad";
      verdict.textContent = `✗ Proof FAILED: ${reasons.join("; ")}`;
    } else {
      verdict.className = "verdict ok";
      verdict.textContent = `✓ Verified in your browser: leaf ${proof.leafIndex} of ${proof.treeSize} in epoch ${proof.epochId}, root ${short(chainRoot)} read from Settlement`;
    }
  } catch (error) {
    verdict.className = "verdict bad";
    verdict.textContent = `✗ Could not check: ${error.message || error}`;
  }
}

// ---- Explorer -------------------------------------------------------------------------------

async function renderExplorer() {
  const epochsBox = el("div", { id: "epochs-box" }, loading("Loading epochs…"));
  const stationsBox = el("div", { id: "stations-box" }, loading("Loading stations…"));
  const tariffsBox = el("div", { id: "tariffs-box" }, loading("Loading tariffs…"));
  const auditBox = el("div", { id: "audit-box" }, loading("Loading the last audit verdict…"));
  api("/v1/audit/last")
    .then((verdict) => auditBox.replaceChildren(auditCard(verdict)))
    .catch((error) => auditBox.replaceChildren(errorBox("Could not load the last audit verdict:", error)));
  show(
    el(
      "section",
      { "aria-labelledby": "explorer-title" },
      el("h1", { id: "explorer-title" }, "Explorer"),
      el("p", { class: "muted" }, "Every sealed epoch, its roots as the backend reports them and as the Settlement contract holds them; the stations and the tariffs."),
      el("h2", {}, "Epochs"),
      epochsBox,
      el("h2", {}, "Stations"),
      stationsBox,
      el("h2", {}, "Tariffs"),
      tariffsBox,
      el("h2", {}, "Last audit"),
      auditBox,
      auditorHowTo(),
    ),
  );
  loadEpochs()
    .then((epochs) => epochsTable(epochs))
    .then((node) => epochsBox.replaceChildren(node))
    .catch((error) => epochsBox.replaceChildren(errorBox("Could not load the epochs:", error)));
  api("/v1/stations")
    .then((list) => stationsBox.replaceChildren(stationsTable(list.stations)))
    .catch((error) => stationsBox.replaceChildren(errorBox("Could not load the stations:", error)));
  api("/v1/tariffs")
    .then((list) =>
      tariffsBox.replaceChildren(
        el(
          "ul",
          { id: "tariffs" },
          list.map((t) =>
            el("li", {}, el("a", { href: `/v1/tariffs/${t.hash}` }, `Tariff ${t.version}`), ` valid from ${when(t.validFrom)}, hash `, hash(t.hash, "tariff hash")),
          ),
        ),
      ),
    )
    .catch((error) => tariffsBox.replaceChildren(errorBox("Could not load the tariffs:", error)));
}

async function epochsTable(epochs) {
  if (!epochs.length) return el("p", { class: "muted", id: "epochs-empty" }, "No epoch has been sealed yet.");
  const rows = await Promise.all(
    epochs.map(async (e) => {
      let chainCell;
      try {
        const c = await state.settlement.getEpoch(e.epochId);
        const ok =
          BigInt(c.committedAt) !== 0n &&
          hexEq(c.recordsRoot, e.recordsRoot) &&
          hexEq(c.creditsRoot, e.creditsRoot) &&
          hexEq(c.tariffHash, e.tariffHash) &&
          BigInt(c.recordCount) === BigInt(e.recordCount);
        chainCell = el(
          "td",
          { "data-label": "On chain", class: ok ? "ok" : "bad", "data-chain-records-root": c.recordsRoot, "data-chain-credits-root": c.creditsRoot },
          BigInt(c.committedAt) === 0n ? "not committed yet" : ok ? "✓ roots match" : "✗ differs from the chain",
        );
      } catch (error) {
        chainCell = el("td", { "data-label": "On chain", class: "bad" }, `could not read: ${error.message || error}`);
      }
      return el(
        "tr",
        { "data-epoch": e.epochId },
        el("td", { "data-label": "Epoch" }, String(e.epochId)),
        el("td", { "data-label": "State" }, e.state),
        el("td", { "data-label": "Records", class: "num" }, count(e.recordCount, "record")),
        el("td", { "data-label": "Records root" }, hash(e.recordsRoot, "records root")),
        el("td", { "data-label": "Credits root" }, hash(e.creditsRoot, "credits root")),
        el("td", { "data-label": "Tariff" }, el("a", { href: `/v1/tariffs/${e.tariffHash}` }, e.tariffVersion), " ", hash(e.tariffHash, "tariff hash")),
        el("td", { "data-label": "Credits", class: "num" }, points(e.totalCredits)),
        el("td", { "data-label": "Debits", class: "num" }, points(e.totalDebits)),
        el("td", { "data-label": "Commit tx" }, hash(e.commitTxHash, "commit tx")),
        el(
          "td",
          { "data-label": "Transactions" },
          (e.steps || []).filter((s) => s.kind !== "commit").length
            ? el(
                "ul",
                { class: "steps" },
                (e.steps || [])
                  .filter((s) => s.kind !== "commit")
                  .map((s) => el("li", {}, `${s.kind} ${s.chunkId ?? ""}: ${count(s.entries, "entry", "entries")}, ${points(s.amount)} `, hash(s.txHash, `${s.kind} tx`), ` (${s.state})`)),
              )
            : "—",
        ),
        chainCell,
      );
    }),
  );
  const head = ["Epoch", "State", "Records", "Records root", "Credits root", "Tariff", "Credits", "Debits", "Commit tx", "Transactions", "On chain"];
  return el(
    "div",
    { class: "scroll" },
    el("table", { id: "epochs" }, el("thead", {}, el("tr", {}, head.map((n) => el("th", { scope: "col" }, n)))), el("tbody", {}, rows)),
  );
}

function stationsTable(stations) {
  if (!stations.length) return el("p", { class: "muted" }, "No station is registered.");
  const head = ["Station", "Status", "Keys", "Records", "Gaps", "Rejections", "Equivocations"];
  return el(
    "div",
    { class: "scroll" },
    el(
      "table",
      { id: "stations" },
      el("thead", {}, el("tr", {}, head.map((n) => el("th", { scope: "col" }, n)))),
      el(
        "tbody",
        {},
        stations.map((s) =>
          el(
            "tr",
            { "data-station": s.stationId },
            el(
              "td",
              { "data-label": "Station" },
              el("a", { href: `#/explorer/station/${s.stationId}`, "aria-label": `Status of station ${s.stationId}` }, hash(s.stationId, "station")),
            ),
            el("td", { "data-label": "Status" }, s.revokedAt ? `revoked ${when(s.revokedAt)}` : s.registered ? "registered" : "unknown"),
            el("td", { "data-label": "Keys" }, `${s.keys.length} (current ${short(s.currentSigner, 6)})`),
            el("td", { "data-label": "Records", class: "num" }, count(s.recordCount, "record")),
            el("td", { "data-label": "Gaps", class: "num" }, s.gapCount ? `${count(s.gapCount, "gap")}, ${fmt.format(s.missingCount)} missing` : "none"),
            el(
              "td",
              { "data-label": "Rejections", class: "num" },
              s.rejectionCount ? `${s.rejectionCount}: ${Object.entries(s.rejections).map(([k, v]) => `${k} ${v}`).join(", ")}` : "none",
            ),
            el(
              "td",
              { "data-label": "Equivocations", class: s.equivocations ? "bad" : "" },
              s.equivocations ? el("a", { href: `#/explorer/station/${s.stationId}` }, `${s.equivocations} (evidence)`) : "none",
            ),
          ),
        ),
      ),
    ),
  );
}

function auditorHowTo() {
  const c = state.config;
  const command =
    `gridpoints-audit --rpc-url ${c.rpcUrl} --deployment deployment.json --api ${location.origin}`;
  return el(
    "section",
    { class: "card", id: "auditor" },
    el("h2", {}, "Audit it yourself"),
    el("p", {}, "The independent auditor recomputes every committed epoch from the records and the chain's events and compares it with the Settlement contract. With a checkout of GridPoints and the deployment file (chain ", String(c.chainId), ", Settlement ", el("code", {}, c.contracts.Settlement), "):"),
    el("pre", {}, el("code", {}, command)),
    el("p", { class: "muted" }, "Exit 0: clean; 1: a discrepancy; 2: it could not audit. See docs/AUDIT.md."),
  );
}

// ---- requests that change something ---------------------------------------------------------

async function apiPost(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(body),
  });
  let answer = null;
  try {
    answer = await response.json();
  } catch {
    /* not JSON */
  }
  if (!response.ok) {
    const error = new Error(answer?.error?.message || `${response.status} ${response.statusText}`);
    error.code = answer?.error?.code;
    throw error;
  }
  return answer;
}

const localTime = (unix) =>
  new Date(Number(unix) * 1000).toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "short" });

// ---- Pay with points at a charger -----------------------------------------------------------
// The station shows a link (or its QR code) to #/pay?offer=…&station=…&maxPoints=…&deadline=…
// &chainId=… (gridpoints_protocol/offers.py; the terms sit in the fragment, which the browser
// sends to no server). The user signs the PaymentAuthorization with exactly those terms in their
// wallet (eth_signTypedData_v4, a fresh random nonce), committing to the station under a fresh
// random salt instead of naming it (chargeCommitment: the chain never sees a station next to the
// wallet), and the page posts the payment opening (the signed authorisation and the salt) to this
// server under the offer's id, where the station polls for it.

const UINT128_MAX = (1n << 128n) - 1n;

/** The charge offer of a #/pay?… fragment, checked field by field (throws with the reason). */
export function parseOffer(fragment) {
  const query = fragment.replace(/^#?\/pay\?/, "");
  const params = new URLSearchParams(query);
  const wanted = ["offer", "station", "maxPoints", "deadline", "chainId"];
  const names = [...params.keys()];
  const missing = wanted.filter((n) => !params.has(n));
  if (missing.length) throw new Error(`the link lacks ${missing.join(", ")}`);
  if (names.length !== wanted.length || names.some((n) => !wanted.includes(n))) {
    throw new Error(`the link must name exactly ${wanted.join(", ")}`);
  }
  const offer = params.get("offer");
  if (!/^[0-9a-f]{32}$/.test(offer)) throw new Error("the offer id is not 32 hex digits");
  const station = params.get("station");
  if (!/^0x[0-9a-fA-F]{64}$/.test(station) || /^0x0+$/.test(station)) throw new Error("the station id is not 0x + 64 hex digits");
  const decimal = (name, digits) => {
    const text = params.get(name);
    if (!new RegExp(`^[0-9]{1,${digits}}$`).test(text)) throw new Error(`${name} is not a decimal number`);
    return BigInt(text);
  };
  const maxPoints = decimal("maxPoints", 39);
  if (maxPoints < 1n || maxPoints > UINT128_MAX) throw new Error("maxPoints must be at least 1 point");
  const deadline = decimal("deadline", 20);
  if (deadline < 1n || deadline >= 1n << 64n) throw new Error("the deadline is not a time");
  const chainId = decimal("chainId", 20);
  return { offer, station: station.toLowerCase(), maxPoints, deadline: Number(deadline), chainId: Number(chainId) };
}

function randomNonce() {
  // Nonces are unordered on chain (a bitmap per user): any unused uint256 works, and 256 random
  // bits never collide with the user's other authorisations.
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return BigInt("0x" + [...bytes].map((b) => b.toString(16).padStart(2, "0")).join(""));
}

async function renderPay() {
  let offer;
  try {
    offer = parseOffer(location.hash);
  } catch (error) {
    show(el("section", { class: "card", id: "offer" }, el("h1", {}, "Pay for a charge with points"), errorBox("This charge offer link is not valid:", error), el("p", {}, "Scan the station's code again, or ask the station for a new one.")));
    return;
  }
  if (offer.chainId !== state.config.chainId) {
    show(
      el(
        "section",
        { class: "card", id: "offer" },
        el("h1", {}, "Pay for a charge with points"),
        errorBox("This offer is for another network:", `the station's offer is for chain ${offer.chainId}; this GridPoints server runs chain ${state.config.chainId}.`),
      ),
    );
    return;
  }
  if (!state.account) return renderConnect();
  if (state.chainId !== state.config.chainId) return renderWrongChain();
  const now = Math.floor(Date.now() / 1000);
  const stationLine = el("span", { id: "offer-station-status" }, "checking the station…");
  const balanceLine = el("span", { id: "offer-balance" }, "reading your balance from the chain…");
  const registrationLine = el("span", { id: "offer-registration" }, "checking that the station registered it…");
  const status = el("div", { id: "offer-status", role: "status", "aria-live": "polite" });
  const expired = offer.deadline <= now;
  const button = el(
    "button",
    { class: "button", type: "button", id: "sign-offer", disabled: expired },
    `Sign: pay up to ${points(offer.maxPoints)}`,
  );
  button.addEventListener("click", () => signOffer(offer, status, button));
  show(
    el(
      "section",
      { class: "card", id: "offer", "aria-labelledby": "offer-title" },
      el("h1", { id: "offer-title" }, "Pay for a charge with points"),
      el("p", { class: "lead", id: "offer-summary" }, `A charging station asks you to pay for one charge with up to ${points(offer.maxPoints)}.`),
      el(
        "dl",
        { class: "terms" },
        el("dt", {}, "Station"),
        el("dd", {}, el("code", { class: "wrap", id: "offer-station" }, offer.station), " ", stationLine),
        el("dt", {}, "At most"),
        el("dd", { id: "offer-max" }, points(offer.maxPoints)),
        el("dt", {}, "Offer"),
        el("dd", {}, registrationLine),
        el("dt", {}, "Valid until"),
        el("dd", { id: "offer-deadline" }, `${localTime(offer.deadline)} (your time) · ${when(offer.deadline)}`),
        el("dt", {}, "From your wallet"),
        el("dd", {}, el("code", { class: "wrap" }, state.account)),
        el("dt", {}, "Your balance"),
        el("dd", {}, balanceLine),
      ),
      el(
        "p",
        {},
        "The charge's price under the published tariff is burned from your points when the charge is settled on chain — never more than the amount above. If your balance is lower then, the rest is paid otherwise. Nothing is burned if it is not settled by the time above. Until it is used, you can cancel it under My points.",
      ),
      expired ? errorBox("This offer has expired:", "ask the station for a new one.") : null,
      button,
      status,
    ),
  );
  api(`/v1/stations/${offer.station}`)
    .then((s) => {
      stationLine.textContent = s.revokedAt ? "(revoked: do not pay here)" : s.registered ? `(registered, tariff zone ${s.zone})` : "(not registered)";
      if (s.revokedAt || !s.registered) button.disabled = true;
    })
    .catch((error) => {
      stationLine.textContent = `(unknown to this server: ${error.message || error})`;
      button.disabled = true;
    });
  // The backend relays an answer only to an offer its station registered (signed by the
  // station's key) with exactly these terms: say so before the user signs in vain.
  api(`/v1/offers/${offer.offer}/authorization`)
    .then((o) => {
      const t = o.offer;
      const same =
        t.stationId.toLowerCase() === offer.station &&
        BigInt(t.maxPoints) === offer.maxPoints &&
        Number(t.deadline) === offer.deadline &&
        Number(t.chainId) === offer.chainId;
      if (!same) {
        registrationLine.textContent = "the station registered other terms than this link shows: do not sign";
        button.disabled = true;
      } else if (o.signed) {
        registrationLine.textContent = "already answered: ask the station for a new offer";
        button.disabled = true;
      } else {
        registrationLine.textContent = "registered by the station, waiting for your signature";
      }
    })
    .catch(() => {
      registrationLine.textContent = "not registered by the station, or expired: ask the station for a new one";
      button.disabled = true;
    });
  state.token
    .balanceOf(state.account)
    .then((b) => {
      balanceLine.textContent = `${points(b)} (PointsToken.balanceOf on chain)`;
      balanceLine.dataset.points = b.toString();
    })
    .catch((error) => (balanceLine.textContent = `could not read it: ${error.message || error}`));
}

async function signOffer(offer, status, button) {
  button.disabled = true;
  status.replaceChildren(loading("Waiting for your wallet's signature…"));
  try {
    const pa = state.config.paymentAuthorization;
    const nonce = randomNonce();
    const salt = randomSalt();
    // Integers above 2^53 - 1 travel as decimal strings: a wallet would round a JSON number.
    const message = {
      user: state.account,
      chargeCommitment: chargeCommitment(offer.station, salt),
      maxPoints: offer.maxPoints.toString(),
      nonce: nonce.toString(),
      deadline: offer.deadline,
    };
    const typed = { types: pa.types, primaryType: pa.primaryType, domain: pa.domain, message };
    const raw = await state.wallet.provider.request({ method: "eth_signTypedData_v4", params: [state.account, JSON.stringify(typed)] });
    // The wallet must have signed exactly these terms with this account.
    const { EIP712Domain: _domainType, ...types } = pa.types;
    if (!hexEq(verifyTypedData(pa.domain, types, message, raw), state.account)) {
      throw new Error("the wallet's signature is not this account's signature of these terms");
    }
    const signed = { authorization: message, signature: Signature.from(raw).serialized, salt };
    // Kept in this browser before it is sent, so that it can be listed and cancelled even if
    // sending fails (with the station it pays at: the authorisation only commits to it).
    remember(state.account, { ...signed, offer: offer.offer, stationId: offer.station, signedAt: Math.floor(Date.now() / 1000) });
    status.replaceChildren(loading("Sending your signed authorisation to the station…"));
    await apiPost(`/v1/offers/${offer.offer}/authorization`, signed);
    status.replaceChildren(
      el(
        "div",
        { class: "success", id: "offer-sent" },
        el("strong", {}, "✓ Sent to the station."),
        ` You authorised up to ${points(offer.maxPoints)} for this charge (nonce ${short(nonce.toString(), 8)}). The station can start charging; after settlement the burned points show under `,
        el("a", { href: "#/points" }, "My points"),
        ".",
      ),
    );
  } catch (error) {
    button.disabled = false;
    const what = error?.code === "offer_taken" ? "Someone already answered this offer:" : "Not sent:";
    status.replaceChildren(errorBox(what, error?.code === 4001 ? "you declined in your wallet." : error));
  }
}

// ---- payment authorisations: listed, cancelled on chain -------------------------------------
// Listed from what this browser signed (localStorage, on the user's own device: it lets the user
// cancel one the station never collected, and remembers the station the salt commits to) merged with what the backend holds
// for the signed-in user (GET /v1/me/authorizations: relayed to a station, or attached to a
// record); their state is read from the Settlement contract (isAuthorizationUsed).

function storeKey(account) {
  return `gridpoints:authorizations:${state.config.chainId}:${state.config.contracts.Settlement}:${account}`.toLowerCase();
}

function remembered(account) {
  try {
    const list = JSON.parse(localStorage.getItem(storeKey(account)) || "[]");
    return Array.isArray(list) ? list : [];
  } catch {
    return [];
  }
}

function remember(account, signed) {
  const list = remembered(account).filter((s) => String(s.authorization.nonce) !== String(signed.authorization.nonce));
  list.push(signed);
  try {
    localStorage.setItem(storeKey(account), JSON.stringify(list.slice(-200)));
  } catch {
    /* storage full or disabled: the list then only shows what the records carry */
  }
}

async function loadMyAuthorizations() {
  const found = { relayed: [], stored: [] };
  let after = -1;
  for (;;) {
    const page = await privateApi(`/v1/me/authorizations?afterLogIndex=${after}&limit=1000`);
    found.relayed.push(...page.relayed);
    found.stored.push(...page.stored);
    if (page.nextAfterLogIndex === null) return found;
    after = page.nextAfterLogIndex;
  }
}

async function authorizationsTable(user, history, held) {
  // Keyed by the authorisation's EIP-712 digest (what PaymentApplied carries); a charge record
  // carries its salted link, paymentLink(digest, salt), which is checked here.
  const pa = state.config.paymentAuthorization;
  const { EIP712Domain: _domainType, ...types } = pa.types;
  const digestOf = (signed) => TypedDataEncoder.hash(pa.domain, types, signed.authorization).toLowerCase();
  const known = new Map(); // digest -> {signed, item, sources, stationId}
  const add = (key, signed, source, item = null) => {
    const entry = known.get(key) || { signed, item: null, sources: [], stationId: null };
    entry.item ||= item;
    entry.stationId ||= signed.stationId || (item ? item.record.record.stationId : null);
    if (!entry.sources.includes(source)) entry.sources.push(source);
    known.set(key, entry);
  };
  for (const signed of remembered(user)) add(digestOf(signed), signed, "this browser");
  // The backend's list is only trusted for what the wallet signed: one for another user is left out.
  for (const r of held.relayed) if (hexEq(r.signed.authorization.user, user)) add(digestOf(r.signed), r.signed, "sent to the station");
  for (const s of held.stored) if (hexEq(s.signed.authorization.user, user)) add(digestOf(s.signed), s.signed, "on a charge record");
  for (const item of history) {
    const payment = item.record.payment;
    if (!payment) continue;
    const digest = digestOf(payment);
    // Only an opening that links to the record's field is the record's payment.
    if (!hexEq(paymentLink(digest, payment.salt), item.record.record.paymentAuthorization)) continue;
    add(digest, payment, "on a charge record", item);
  }
  if (!known.size) {
    return el("p", { class: "muted", id: "authorizations-empty" }, "No payment authorisation: none signed in this browser, none held by the backend for you.");
  }
  const now = Math.floor(Date.now() / 1000);
  const rows = await Promise.all(
    [...known.values()].map(async ({ signed, item, sources, stationId }) => {
      const a = signed.authorization;
      const nonce = BigInt(a.nonce).toString();
      const used = await state.settlement.isAuthorizationUsed(user, BigInt(nonce));
      const stateCell = el("td", { "data-label": "State", class: "auth-state" });
      const action = el("td", { "data-label": "Action" });
      let open = false;
      if (item && item.debited !== null && item.debited !== undefined && item.state === "settled") {
        stateCell.append(`paid: ${points(item.debited)} burned in epoch ${item.epochId}`);
      } else if (used) {
        stateCell.append("used on chain: cancelled (or voided); can no longer pay");
      } else if (Number(a.deadline) < now) {
        stateCell.append("expired: can no longer pay");
      } else {
        open = true;
        stateCell.append(item ? `open: attached to a charge (#${item.record.record.sequence}) waiting for settlement` : "open: not used yet");
        stateCell.classList.add("open");
      }
      if (open) {
        const button = el(
          "button",
          { type: "button", class: "button small cancel", "aria-label": `Cancel the authorisation with nonce ${nonce}` },
          "Cancel on chain",
        );
        button.addEventListener("click", () => cancelAuthorization(nonce, stateCell, button));
        action.append(button);
      } else {
        action.append("—");
      }
      return el(
        "tr",
        { "data-nonce": nonce, "data-open": open ? "true" : "false", "data-sources": sources.join(",") },
        el("td", { "data-label": "Station" }, stationId ? hash(stationId, "station") : "—"),
        el("td", { "data-label": "At most", class: "num" }, points(a.maxPoints)),
        el("td", { "data-label": "Valid until" }, when(a.deadline)),
        el("td", { "data-label": "Nonce" }, el("code", { title: nonce }, short(nonce, 8))),
        el("td", { "data-label": "Known from", class: "sources" }, sources.join("; ")),
        stateCell,
        action,
      );
    }),
  );
  const head = ["Station", "At most", "Valid until", "Nonce", "Known from", "State", "Action"];
  const openCount = rows.filter((r) => r.dataset.open === "true").length;
  return el(
    "div",
    { class: "scroll" },
    el(
      "table",
      { id: "authorizations" },
      el("caption", {}, `${openCount} open of ${rows.length} (state read from the Settlement contract)`),
      el("thead", {}, el("tr", {}, head.map((n) => el("th", { scope: "col" }, n)))),
      el("tbody", {}, rows),
    ),
  );
}

async function cancelAuthorization(nonce, stateCell, button) {
  button.disabled = true;
  stateCell.classList.remove("open");
  stateCell.replaceChildren(loading("Waiting for your wallet to send the cancellation…"));
  try {
    const data = state.settlement.interface.encodeFunctionData("cancelAuthorization", [BigInt(nonce)]);
    const txHash = await state.wallet.provider.request({
      method: "eth_sendTransaction",
      params: [{ from: state.account, to: state.config.contracts.Settlement, data }],
    });
    stateCell.replaceChildren(loading(`Cancellation sent (${short(txHash)}); waiting for it to be mined…`));
    const receipt = await waitForReceipt(txHash);
    if (receipt.status !== 1) throw new Error(`the cancellation transaction ${txHash} reverted`);
    const used = await state.settlement.isAuthorizationUsed(state.account, BigInt(nonce));
    if (!used) throw new Error("the transaction was mined but the chain does not show the nonce as used");
    stateCell.replaceChildren(el("span", { class: "ok" }, `cancelled on chain in block ${receipt.blockNumber}, tx `), hash(txHash, "cancel tx"));
    button.remove();
  } catch (error) {
    button.disabled = false;
    stateCell.replaceChildren(errorBox("Not cancelled:", error?.code === 4001 ? "you declined in your wallet." : error));
  }
}

async function waitForReceipt(txHash, timeoutMs = 120_000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const receipt = await state.rpc.getTransactionReceipt(txHash);
    if (receipt) return receipt;
    if (Date.now() > end) throw new Error(`transaction ${txHash} not mined within ${timeoutMs / 1000} s`);
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

// ---- Explorer: one station's status ---------------------------------------------------------

async function renderStation(stationId) {
  const body = el("div", { id: "station-box" }, loading("Loading the station…"));
  show(
    el(
      "section",
      { "aria-labelledby": "station-title" },
      el("p", {}, el("a", { href: "#/explorer" }, "← Explorer")),
      el("h1", { id: "station-title" }, "Station ", el("code", { class: "wrap" }, stationId)),
      body,
    ),
  );
  try {
    if (!/^0x[0-9a-fA-F]{64}$/.test(stationId)) throw new Error("a station id is 0x + 64 hex digits");
    const [s, rejections, equivocations] = await Promise.all([
      api(`/v1/stations/${stationId}`),
      api(`/v1/stations/${stationId}/rejections?limit=50`),
      api(`/v1/stations/${stationId}/equivocations`),
    ]);
    body.replaceChildren(...stationDetails(s, rejections, equivocations));
  } catch (error) {
    body.replaceChildren(errorBox("Could not load the station:", error));
  }
}

function stationDetails(s, rejections, equivocations) {
  const status = s.revokedAt ? `revoked since ${when(s.revokedAt)}` : s.registered ? "registered" : "not registered";
  const facts = el(
    "dl",
    { class: "terms card", id: "station-facts" },
    el("dt", {}, "Status"),
    el("dd", { id: "station-status" }, status),
    el("dt", {}, "Tariff zone"),
    el("dd", {}, s.zone ?? "—"),
    el("dt", {}, "Maximum power"),
    el("dd", {}, s.maxPowerW === null ? "—" : `${(s.maxPowerW / 1000).toLocaleString("en-US")} kW`),
    el("dt", {}, "Active from"),
    el("dd", {}, s.activeFrom === null ? "—" : s.activeFrom === 0 ? "the start (any record end time)" : when(s.activeFrom)),
    el("dt", {}, "Records accepted"),
    el("dd", { id: "station-records" }, `${count(s.recordCount, "record")}, last sequence ${s.lastSequence ?? "—"}`),
    el("dt", {}, "Last record received"),
    el("dd", {}, s.lastSeenAt ? s.lastSeenAt.replace("T", " ").slice(0, 16) + " UTC" : "—"),
  );
  const keys = el(
    "table",
    { id: "station-keys" },
    el("caption", {}, `Signing keys (${s.keys.length}), from the StationRegistry's events`),
    el("thead", {}, el("tr", {}, ["Key (signer address)", "Valid for records ending from", "until"].map((n) => el("th", { scope: "col" }, n)))),
    el(
      "tbody",
      {},
      s.keys.map((k) =>
        el(
          "tr",
          { "data-signer": k.signer },
          el("td", { "data-label": "Key" }, el("code", { class: "wrap" }, k.signer)),
          el("td", { "data-label": "From" }, k.validFrom === 0 ? "the start" : when(k.validFrom)),
          el("td", { "data-label": "Until" }, k.validUntil === null ? "current key" : when(k.validUntil)),
        ),
      ),
    ),
  );
  const gaps = s.gapCount
    ? el(
        "div",
        { id: "station-gaps" },
        el("p", {}, `${count(s.gapCount, "gap")}: ${count(s.missingCount, "sequence")} below ${s.lastSequence} never arrived${s.gapsTruncated ? " (first gaps shown)" : ""}:`),
        el("ul", {}, s.gaps.map((g) => el("li", {}, g.first === g.last ? `sequence ${g.first}` : `sequences ${g.first}–${g.last} (${g.last - g.first + 1} records)`))),
      )
    : el("p", { id: "station-gaps" }, s.lastSequence ? `No gaps: every sequence 1–${s.lastSequence} arrived.` : "No records yet.");
  const rejectionList = s.rejectionCount
    ? el(
        "div",
        { id: "station-rejections" },
        el("p", {}, `${count(s.rejectionCount, "rejected submission")}: `, Object.entries(s.rejections).map(([k, v]) => `${k} × ${v}`).join(", ")),
        el(
          "table",
          {},
          el("caption", {}, `First ${rejections.rejections.length} (all in `, el("a", { href: `/v1/stations/${s.stationId}/rejections` }, "the API"), ")"),
          el("thead", {}, el("tr", {}, ["Received", "Sequence", "Reason", "Message"].map((n) => el("th", { scope: "col" }, n)))),
          el(
            "tbody",
            {},
            rejections.rejections.map((r) =>
              el(
                "tr",
                {},
                el("td", { "data-label": "Received" }, r.receivedAt.replace("T", " ").slice(0, 19)),
                el("td", { "data-label": "Sequence" }, r.sequence ?? "—"),
                el("td", { "data-label": "Reason" }, el("code", {}, r.reason)),
                el("td", { "data-label": "Message", class: "message" }, r.message),
              ),
            ),
          ),
        ),
      )
    : el("p", { id: "station-rejections" }, "No rejected submissions.");
  const evidence = equivocations.equivocations.length
    ? el(
        "div",
        { id: "station-equivocations" },
        el("p", { class: "bad" }, `${count(equivocations.equivocations.length, "equivocation")}: the station signed two different records for one sequence. Both signed records are kept as evidence (`, el("a", { href: `/v1/stations/${s.stationId}/equivocations` }, "JSON"), ")."),
        el(
          "table",
          {},
          el("thead", {}, el("tr", {}, ["Sequence", "Detected", "Accepted record", "Conflicting record"].map((n) => el("th", { scope: "col" }, n)))),
          el(
            "tbody",
            {},
            equivocations.equivocations.map((e) =>
              el(
                "tr",
                { "data-sequence": e.sequence },
                el("td", { "data-label": "Sequence" }, String(e.sequence)),
                el("td", { "data-label": "Detected" }, e.detectedAt.replace("T", " ").slice(0, 19)),
                el("td", { "data-label": "Accepted" }, hash(e.accepted.digest, "accepted digest")),
                el("td", { "data-label": "Conflicting" }, hash(e.conflicting.digest, "conflicting digest")),
              ),
            ),
          ),
        ),
      )
    : el("p", { id: "station-equivocations" }, "No equivocation: never two records for one sequence.");
  return [
    facts,
    el("h2", {}, "Keys and their history"),
    el("div", { class: "scroll" }, keys),
    el("h2", {}, "Sequence gaps"),
    gaps,
    el("h2", {}, "Rejections"),
    el("div", { class: "scroll" }, rejectionList),
    el("h2", {}, "Equivocation evidence"),
    el("div", { class: "scroll" }, evidence),
  ];
}

// ---- Explorer: the last audit verdict -------------------------------------------------------

function auditCard(verdict) {
  if (!verdict.recorded) {
    return el("p", { class: "card muted", id: "audit-verdict", "data-verdict": "none" }, "No audit verdict is recorded on this server. Run the independent auditor yourself (below): it needs nothing from the operator but the public API and the chain.");
  }
  if (verdict.problem) {
    return el("div", { class: "card", id: "audit-verdict", "data-verdict": "unreadable" }, errorBox("The recorded audit report cannot be shown:", verdict.problem));
  }
  const r = verdict.report;
  const clean = r.clean;
  const kinds = Object.entries(r.kinds).map(([k, v]) => `${k} × ${v}`).join(", ");
  return el(
    "div",
    { class: `card ${clean ? "" : "notice"}`, id: "audit-verdict", "data-verdict": clean ? (r.complete ? "clean" : "partial") : "discrepancies" },
    el(
      "p",
      { class: `big-verdict ${clean ? "ok" : "bad"}` },
      clean ? (r.complete ? "✓ Clean" : "✓ Clean, but partial (a range of epochs)") : `✗ ${fmt.format(r.discrepancyCount)} discrepancies: ${kinds}`,
    ),
    el(
      "p",
      {},
      `gridpoints-audit checked ${count(r.epochs.length, "epoch")} (up to epoch ${r.lastEpochId}, chain block ${r.block}) and ${count(r.records, "record")}; ${points(r.minted)} minted, ${points(r.burned)} burned, ${points(r.totalSupply)} in supply.`,
    ),
    el("p", { class: "muted" }, `Recorded ${verdict.recordedAt.replace("T", " ").slice(0, 16)} UTC by the operator, who ran the auditor and stored its report: this is the operator's word. Run it yourself to check.`),
  );
}

// ---- routing --------------------------------------------------------------------------------

const WALLET_VIEWS = new Set(["points", "pay"]);

function currentView() {
  const h = location.hash;
  if (h.startsWith("#/explorer/station/")) return "station";
  if (h.startsWith("#/explorer")) return "explorer";
  if (h.startsWith("#/pay")) return "pay";
  return "points";
}

async function route() {
  const view = currentView();
  for (const link of document.querySelectorAll("nav a[data-view]")) {
    if (link.dataset.view === view || (view === "station" && link.dataset.view === "explorer")) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const titles = { explorer: "Explorer", station: "Station · Explorer", pay: "Pay with points", points: "My points" };
  document.title = `${titles[view]} · GridPoints`;
  if (view === "explorer") await renderExplorer();
  else if (view === "station") await renderStation(location.hash.slice("#/explorer/station/".length));
  else if (view === "pay") await renderPay();
  else await renderPoints();
  // Keyboard and screen-reader users land on the new view, not on the link they left.
  if (document.body.dataset.ready === "true") document.getElementById("main").focus({ preventScroll: true });
}

async function main() {
  try {
    await loadConfig();
  } catch (error) {
    show(errorBox("The app could not load its configuration:", error));
    return;
  }
  discoverWallets();
  window.addEventListener("hashchange", () => route());
  await route();
  document.body.dataset.ready = "true";
}

main();
