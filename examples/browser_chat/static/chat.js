// The browser side of examples/browser_chat: the wire protocol (docs/protocol.md)
// over the browser's own WebSocket, no library and no build step.
//
// The message contract, mirrored from server.py (payload keys are camelCase):
//   JOIN {roomId}            RPC -> JOINED {roomId, user, members}
//   SAY {text}               -> everyone in the room, us too: ROOM_MESSAGE {roomId, user, text}
//   ROLL {dice}              RPC -> $ws:rpc-progress {rolls, total} per die, then ROLLED {rolls, total}
//   USER_JOINED / USER_LEFT  {roomId, user, members}
//   ERROR / RPC_ERROR        {code, message, details?, retryable, retryAfterMs?}

/** Reconnect delays, ms: doubling from `initial` up to `max`, each one jittered. */
const BACKOFF = { initial: 250, max: 4000 };
const RPC_TIMEOUT_MS = 5000;
const DICE = ["\u2680", "\u2681", "\u2682", "\u2683", "\u2684", "\u2685"];

const $ = (id) => document.getElementById(id);

/** An ERROR or RPC_ERROR frame's payload, as an exception. */
class WireError extends Error {
  constructor(payload) {
    super(`${payload.code}: ${payload.message}`);
    this.code = payload.code;
    this.retryable = payload.retryable;
  }
}

/**
 * One logical connection that survives the socket: reconnects with jittered
 * exponential backoff whenever the socket closes, and calls `onOpen` after
 * every (re)connect so the app can restore its state (join its room again).
 */
class Connection {
  constructor(url, { onOpen, onLost, onStatus }) {
    this.url = url;
    this.onOpen = onOpen;
    this.onLost = onLost;
    this.onStatus = onStatus;
    this.handlers = new Map();
    /** correlationId -> {resolve, reject, replyType, onProgress, timer} */
    this.pending = new Map();
    this.nextId = 1;
    this.attempt = 0;
    this.connects = 0;
    this.socket = null;
    this.connect();
  }

  get isOpen() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  on(type, handler) {
    this.handlers.set(type, handler);
  }

  connect() {
    this.onStatus("connecting", "connecting\u2026");
    const socket = new WebSocket(this.url);
    this.socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      this.attempt = 0;
      this.connects += 1;
      this.onStatus("open", "connected");
      this.onOpen();
    };
    socket.onmessage = (event) => this.receive(event.data);
    // An error is always followed by a close; the close decides what happens next.
    socket.onclose = (event) => {
      this.socket = null;
      this.failPending(new Error("connection lost"));
      if (opened) this.onLost(event);
      const delay = this.backoff();
      this.onStatus("waiting", `offline (${event.code}); retrying in ${(delay / 1000).toFixed(1)} s`);
      setTimeout(() => this.connect(), delay);
    };
  }

  /** The next delay: the ceiling doubles per failed attempt; half of it is random
   * ("equal jitter"), so a restart does not bring every tab back at once. */
  backoff() {
    const ceiling = Math.min(BACKOFF.max, BACKOFF.initial * 2 ** this.attempt);
    this.attempt += 1;
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  frame(type, payload, meta) {
    const frame = { type, meta: { timestamp: Date.now(), ...meta } };
    if (payload !== undefined) frame.payload = payload;
    return JSON.stringify(frame);
  }

  /** A fire-and-forget message; false when offline (nothing is queued). */
  send(type, payload) {
    if (!this.isOpen) return false;
    this.socket.send(this.frame(type, payload, {}));
    return true;
  }

  /** An RPC: resolves with the reply's payload, rejects with a WireError (or a
   * lost connection); `onProgress` gets each progress frame's payload. */
  request(type, payload, replyType, { onProgress = () => {}, timeoutMs = RPC_TIMEOUT_MS } = {}) {
    return new Promise((resolve, reject) => {
      if (!this.isOpen) {
        reject(new Error("offline"));
        return;
      }
      const id = `c-${this.nextId++}`;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        this.socket?.send(this.frame("$ws:abort", undefined, { correlationId: id }));
        reject(new Error(`${type} timed out`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, replyType, onProgress, timer });
      this.socket.send(this.frame(type, payload, { correlationId: id, timeoutMs }));
    });
  }

  failPending(error) {
    for (const call of this.pending.values()) {
      clearTimeout(call.timer);
      call.reject(error);
    }
    this.pending.clear();
  }

  receive(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    const id = frame.meta?.correlationId;
    const call = id === undefined ? undefined : this.pending.get(id);
    if (call !== undefined) {
      if (frame.type === "$ws:rpc-progress") {
        call.onProgress(frame.payload ?? frame.data); // payload first, data for old servers
        return;
      }
      this.pending.delete(id);
      clearTimeout(call.timer);
      if (frame.type === "RPC_ERROR" || frame.type === "ERROR") call.reject(new WireError(frame.payload));
      else if (frame.type === call.replyType) call.resolve(frame.payload);
      else call.reject(new Error(`unexpected ${frame.type} for ${id}`));
      return;
    }
    const handler = this.handlers.get(frame.type);
    if (handler !== undefined) handler(frame.payload, frame.meta ?? {});
  }
}

// -- the page ---------------------------------------------------------------------

let conn = null;
let room = null;

function log(kind, ...parts) {
  const item = document.createElement("li");
  item.className = kind;
  for (const part of parts) item.append(part);
  $("log").append(item);
  $("log").scrollTop = $("log").scrollHeight;
}

function bold(text) {
  const b = document.createElement("b");
  b.textContent = text;
  return b;
}

function setStatus(state, text) {
  const status = $("status");
  status.dataset.state = state;
  status.dataset.connects = String(conn?.connects ?? 0);
  status.textContent = text;
  const online = state === "joined";
  for (const id of ["text", "send", "roll"]) $(id).disabled = !online;
}

function showMembers(payload) {
  $("room-name").textContent = payload.roomId;
  $("members").replaceChildren(
    ...payload.members.map((name) => {
      const item = document.createElement("li");
      item.textContent = name;
      return item;
    }),
  );
}

async function join(roomId) {
  try {
    const joined = await conn.request("JOIN", { roomId }, "JOINED");
    room = joined.roomId;
    showMembers(joined);
    setStatus("joined", `online as ${joined.user}`);
    log("event", `you joined ${joined.roomId}`);
  } catch (error) {
    log("error", `join failed: ${error.message}`);
  }
}

function start(name) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}/ws?access_token=${encodeURIComponent(name)}`;
  conn = new Connection(url, {
    onStatus: setStatus,
    // After every (re)connect: back into the room (the last one joined, else the form's).
    onOpen: () => join(room ?? $("room").value),
    onLost: (event) => {
      const why = event.code === 1001 ? "the server is going away" : `code ${event.code}`;
      log("event", `disconnected (${why}); reconnecting\u2026`);
    },
  });
  conn.on("ROOM_MESSAGE", (m) => log("msg", bold(m.user), `: ${m.text}`));
  conn.on("USER_JOINED", (p) => {
    showMembers(p);
    log("event", `${p.user} joined`);
  });
  conn.on("USER_LEFT", (p) => {
    showMembers(p);
    log("event", `${p.user} left`);
  });
  conn.on("ERROR", (e) => log("error", `${e.code}: ${e.message}`));
}

$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (conn === null) {
    $("name").disabled = true; // the name is the connection's token
    start($("name").value);
  } else if (conn.isOpen) {
    room = null;
    join($("room").value);
  }
});

$("say-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (text && conn?.send("SAY", { text })) $("text").value = "";
});

$("roll-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const dice = Number($("dice").value);
  const rolls = $("dice-rolls");
  const total = $("dice-total");
  let progress = 0;
  rolls.textContent = "";
  rolls.dataset.progress = "0";
  total.dataset.state = "rolling";
  total.textContent = `rolling ${dice}\u2026`;
  const show = (result) => {
    rolls.textContent = result.rolls.map((n) => DICE[n - 1]).join("");
    rolls.title = result.rolls.join(" + ");
  };
  try {
    const result = await conn.request("ROLL", { dice }, "ROLLED", {
      onProgress: (partial) => {
        progress += 1;
        rolls.dataset.progress = String(progress);
        show(partial);
        total.textContent = `rolling\u2026 ${partial.rolls.length} of ${dice} landed`;
      },
    });
    show(result);
    total.dataset.state = "done";
    total.textContent = `${result.rolls.join(" + ")} = ${result.total}`;
  } catch (error) {
    total.dataset.state = "failed";
    total.textContent = `roll failed: ${error.message}`;
  }
});

// ?name=alice&room=lobby fills the form in (handy for opening several tabs).
const query = new URLSearchParams(location.search);
if (query.has("name")) $("name").value = query.get("name");
if (query.has("room")) $("room").value = query.get("room");
