// The test wallet: an EIP-1193 provider as a wallet extension injects it (tests/web/test_web.py).
// Account and chain are the wallet's own answers; every other request goes to the node (Anvil
// signs eth_signTypedData_v4 and sends transactions for its unlocked dev accounts).
(({rpcUrl, account, chainId, walletChainId, announce}) => {
  let current = walletChainId;
  let nextId = 0;
  const listeners = {};
  const emit = (event, value) => (listeners[event] || []).forEach((f) => f(value));
  const provider = {
    async request({ method, params }) {
      if (method === "eth_requestAccounts" || method === "eth_accounts") return [account];
      if (method === "eth_chainId") return "0x" + current.toString(16);
      if (method === "wallet_switchEthereumChain") {
        const wanted = parseInt(params[0].chainId, 16);
        if (wanted !== chainId) {
          throw Object.assign(new Error("Unrecognized chain"), { code: 4902 });
        }
        current = wanted;
        emit("chainChanged", params[0].chainId);
        return null;
      }
      const response = await fetch(rpcUrl, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ jsonrpc: "2.0", id: ++nextId, method, params: params || [] }),
      });
      const body = await response.json();
      if (body.error) throw Object.assign(new Error(body.error.message), body.error);
      return body.result;
    },
    on(event, f) { (listeners[event] ||= []).push(f); return provider; },
    removeListener(event, f) {
      listeners[event] = (listeners[event] || []).filter((g) => g !== f);
      return provider;
    },
  };
  if (announce) {
    const info = Object.freeze({
      uuid: "6f1b1c53-2f3e-4b8e-9d0c-3a1f5e2b7c90",
      name: "Test Wallet",
      icon: "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 1 1'%3E%3Crect width='1' height='1' fill='%23f2a900'/%3E%3C/svg%3E",
      rdns: "org.gridpoints.test-wallet",
    });
    const detail = Object.freeze({ info, provider });
    const announceIt = () =>
      window.dispatchEvent(new CustomEvent("eip6963:announceProvider", { detail }));
    window.addEventListener("eip6963:requestProvider", announceIt);
    announceIt();
  } else {
    window.ethereum = provider;
  }
})
