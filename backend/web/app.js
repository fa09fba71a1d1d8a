// GridPoints web app: "My points" for wallet users, "Explorer" for auditors.
// Plain ES module, no build step. It talks to this server's own API (/v1, /web/config.json) and
// to the RPC URL the server names in /web/config.json, nothing else (the CSP enforces it).
// Balances and epoch roots are read from the chain, never taken from the backend's word;
// inclusion proofs are checked here, in the browser, against the root on chain.
import { Contract, JsonRpcProvider, TypedDataEncoder, getAddress } from "./vendor/ethers.js";
import { recordLeafHash, verifyInclusion } from "./merkle.js";

const TOKEN_ABI = ["function balanceOf(address) view returns (uint256)"];
const SETTLEMENT_ABI = [
  "function lastEpochId() view returns (uint64)",
  "function getEpoch(uint64 epochId) view returns (tuple(bytes32 recordsRoot, bytes32 creditsRoot, bytes32 tariffHash, uint64 recordCount, uint64 committedAt, uint128 totalCredits, uint128 totalDebits, uint128 appliedCredits, uint128 appliedDebits, bytes32 planRoot, uint32 chunkCount, uint64 appliableAt))",
];
const RECORD_TYPES = {
  EnergyTransfer: [
    { name: "stationId", type: "bytes32" },
    { name: "sequence", type: "uint64" },
    { name: "user", type: "address" },
    { name: "direction", type: "uint8" },
    { name: "energyWh", type: "uint64" },
    { name: "meterBeforeWh", type: "uint64" },
    { name: "meterAfterWh", type: "uint64" },
    { name: "startTime", type: "uint64" },
    { name: "endTime", type: "uint64" },
    { name: "paymentAuthorization", type: "bytes32" },
  ],
};
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
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body?.error?.message) message = body.error.message;
    } catch {
      /* not JSON */
    }
    throw new Error(`${path}: ${message}`);
  }
  return response.json();
}

// Private data (a user's history) goes through here: once sign-in with the wallet (EIP-4361)
// lands with the privacy issue, this is where the session is obtained and its token attached.
async function privateApi(path) {
  return api(path);
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
  state.token = new Contract(config.contracts.PointsToken, TOKEN_ABI, state.rpc);
  state.settlement = new Contract(config.contracts.Settlement, SETTLEMENT_ABI, state.rpc);
}

// ---- wallets: EIP-6963 discovery, EIP-1193 fallback ------------------------------------------

window.addEventListener("eip6963:announceProvider", (event) => {
  const { info, provider } = event.detail || {};
  if (!info?.uuid || !provider?.request) return;
  state.wallets.set(info.uuid, { info, provider });
  if (!state.account && currentView() === "points") renderPoints();
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
      renderPoints();
    });
    choice.provider.on("accountsChanged", (list) => {
      state.account = list?.length ? getAddress(list[0]) : null;
      renderPoints();
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
  const historyBox = el("div", { id: "history" }, loading("Loading your records…"));
  section.append(el("p", { class: "muted" }, "Wallet ", el("code", { id: "account" }, user)), balanceBox, historyBox);
  show(section);

  state.token
    .balanceOf(user)
    .then((balance) => {
      balanceBox.replaceChildren(
        el("div", { class: "label" }, "Balance (PointsToken.balanceOf on chain)"),
        el("div", { class: "big", id: "balance-value", "data-points": balance.toString() }, points(balance)),
      );
    })
    .catch((error) => balanceBox.replaceChildren(errorBox("Could not read the balance from the chain:", error)));

  try {
    const [history] = await Promise.all([loadHistory(user), loadEpochs(), loadTariffs()]);
    historyBox.replaceChildren(...historyTables(history));
  } catch (error) {
    historyBox.replaceChildren(errorBox("Could not load your records:", error));
  }
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

async function loadHistory(user) {
  const history = [];
  let after = -1;
  for (;;) {
    const page = await privateApi(`/v1/users/${user}?afterLogIndex=${after}&limit=1000`);
    history.push(...page.history);
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
          "To see your points, this page needs an Ethereum wallet in your browser (a browser extension or a wallet app's built-in browser). None announced itself, and there is no window.ethereum provider.",
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
            await renderPoints();
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
      el("h1", {}, "My points"),
      el("p", {}, "Connect your wallet to see your points balance (read from the chain), your records and their proofs."),
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
        `Your wallet is on chain ${state.chainId}; GridPoints runs on chain ${state.config.chainId}. Switch your wallet to chain ${state.config.chainId} to see your points.`,
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
              await renderPoints();
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
    const proof = await api(`/v1/records/${r.stationId}/${r.sequence}/proof`);
    const reasons = [];
    // The record the proof is about must be the one of my history, and its digest must be the
    // EIP-712 hash of its fields (recomputed here, under the records' domain).
    const rec = proof.record.record;
    for (const key of Object.keys(r)) if (String(rec[key]) !== String(r[key])) reasons.push(`record field ${key} differs`);
    const domainOf = {
      name: "GridPoints",
      version: "1",
      chainId: state.config.chainId,
      verifyingContract: state.config.contracts.StationRegistry,
    };
    const digest = TypedDataEncoder.hash(domainOf, RECORD_TYPES, rec);
    if (!hexEq(digest, proof.record.digest)) reasons.push("the record's digest is not the hash of its fields");
    const leaf = recordLeafHash(digest, proof.record.signature);
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
        el("td", { "data-label": "Records", class: "num" }, `${fmt.format(e.recordCount)} records`),
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
                  .map((s) => el("li", {}, `${s.kind} ${s.chunkId ?? ""}: ${s.entries} entries, ${points(s.amount)} `, hash(s.txHash, `${s.kind} tx`), ` (${s.state})`)),
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
            el("td", { "data-label": "Station" }, hash(s.stationId, "station")),
            el("td", { "data-label": "Status" }, s.revokedAt ? `revoked ${when(s.revokedAt)}` : s.registered ? "registered" : "unknown"),
            el("td", { "data-label": "Keys" }, `${s.keys.length} (current ${short(s.currentSigner, 6)})`),
            el("td", { "data-label": "Records", class: "num" }, `${fmt.format(s.recordCount)} records`),
            el("td", { "data-label": "Gaps", class: "num" }, s.gapCount ? `${s.gapCount} gaps, ${s.missingCount} missing` : "none"),
            el(
              "td",
              { "data-label": "Rejections", class: "num" },
              s.rejectionCount ? `${s.rejectionCount}: ${Object.entries(s.rejections).map(([k, v]) => `${k} ${v}`).join(", ")}` : "none",
            ),
            el(
              "td",
              { "data-label": "Equivocations", class: s.equivocations ? "bad" : "" },
              s.equivocations ? el("a", { href: `/v1/stations/${s.stationId}/equivocations` }, `${s.equivocations} (evidence)`) : "none",
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

// ---- routing --------------------------------------------------------------------------------

function currentView() {
  return location.hash.startsWith("#/explorer") ? "explorer" : "points";
}

async function route() {
  const view = currentView();
  for (const link of document.querySelectorAll("nav a[data-view]")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = view === "explorer" ? "Explorer · GridPoints" : "My points · GridPoints";
  if (view === "explorer") await renderExplorer();
  else await renderPoints();
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
