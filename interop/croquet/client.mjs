// One real @croquet/croquet 2.0.4 Node client, forked by harness.mjs (IPC channel required).
//
// Config comes from the environment (set by the harness):
//   CROQUET_BOX, CROQUET_APP_ID, CROQUET_SESSION, CROQUET_PASSWORD, CLIENT_NAME
// The parent drives it with IPC commands ({cmd: "inc" | "state" | "snapshot" | "leave" | "exit"})
// and gets JSON reports back ({type: "joined" | "sent" | "state" | "left" | "error", ...}).

import { createRequire } from "node:module";

// The 2.0.4 Node build resolves `box=`/`files=` against window.location, which Node lacks:
// without this shim Session.join throws and snapshot uploads fail (design doc §3.3).
globalThis.window = { location: "http://localhost/" };

const require = createRequire(import.meta.url);

const NAME = process.env.CLIENT_NAME;
const cfg = {
    box: process.env.CROQUET_BOX,
    appId: process.env.CROQUET_APP_ID,
    name: process.env.CROQUET_SESSION,
    password: process.env.CROQUET_PASSWORD,
};

function report(msg) {
    if (process.connected) process.send({ name: NAME, ...msg });
}

// ---------------------------------------------------------------------------------------------
// Wire tap: the Node build uses the `ws` package's WebSocket (it sets globalThis.WebSocket to
// it), so wrapping its prototype lets us observe every frame the library sends and receives,
// without changing anything. Gives wire-level evidence (SYNC contents, REQU, SNAP, close codes).
const wire = {
    sent: {},           // action -> count
    received: {},       // action -> count
    joins: 0,
    syncs: [],          // summary of every SYNC received
    snaps: [],          // args of every SNAP sent (url, time, seq, hash)
    requ: 0,
    closes: [],         // {code, reason}
    recvSeqGaps: 0,
    lastRecvSeq: null,
};
{
    const { WebSocket } = require("ws");
    const origSend = WebSocket.prototype.send;
    WebSocket.prototype.send = function (data, ...rest) {
        if (typeof data === "string") {
            try {
                const m = JSON.parse(data);
                wire.sent[m.action] = (wire.sent[m.action] || 0) + 1;
                if (m.action === "JOIN") wire.joins++;
                if (m.action === "SNAP") {
                    const { time, seq, hash, url, dissident } = m.args;
                    wire.snaps.push({ time, seq, hash, url, dissident, at: Date.now() });
                }
            } catch { /* not JSON: ignore */ }
        }
        return origSend.call(this, data, ...rest);
    };
    const origEmit = WebSocket.prototype.emit;
    WebSocket.prototype.emit = function (event, ...args) {
        try {
            if (event === "message") {
                const text = args[0].toString();
                if (!text.startsWith("_CHUNK")) {
                    const m = JSON.parse(text);
                    wire.received[m.action] = (wire.received[m.action] || 0) + 1;
                    if (m.action === "SYNC") {
                        const a = m.args;
                        wire.syncs.push({
                            url: a.url, time: a.time, seq: a.seq, messages: a.messages.length,
                            snapshotTime: a.snapshotTime, snapshotSeq: a.snapshotSeq,
                            timeline: a.timeline, hasTove: typeof a.tove === "string",
                            firstMessageSeq: a.messages.length ? a.messages[0][1] : null,
                        });
                        wire.lastRecvSeq = a.seq;
                    } else if (m.action === "RECV") {
                        const seq = m.args[1];
                        if (wire.lastRecvSeq !== null && seq !== ((wire.lastRecvSeq + 1) >>> 0)) wire.recvSeqGaps++;
                        wire.lastRecvSeq = seq;
                    } else if (m.action === "REQU") {
                        wire.requ++;
                    }
                }
            } else if (event === "close") {
                wire.closes.push({ code: args[0], reason: String(args[1] || "") });
            }
        } catch (e) {
            console.error(`[${NAME}] wire tap could not parse a frame:`, e.message);
        }
        return origEmit.call(this, event, ...args);
    };
}

const Croquet = require("@croquet/croquet");

// Not replicated, diagnostic only: did *this process* run the root model's init()?
// A late joiner that syncs from a snapshot must not.
let initRanHere = false;

// ---------------------------------------------------------------------------------------------
// The replicated model: a counter that records its whole history, including who sent every
// increment and every view-join / view-exit with its viewData, stamped with model time.
class InteropCounter extends Croquet.Model {
    init() {
        initRanHere = true;
        this.count = 0;
        this.history = [];
        this.subscribe(this.sessionId, "view-join", this.viewJoined);
        this.subscribe(this.sessionId, "view-exit", this.viewExited);
        this.subscribe("counter", "inc", this.increment);
    }

    increment(data) {
        this.count += 1;
        this.history.push(["inc", data.by, data.n, this.count, this.now()]);
    }

    viewJoined(payload) {
        this.history.push(["join", ...InteropCounter.who(payload), this.now()]);
    }

    viewExited(payload) {
        this.history.push(["exit", ...InteropCounter.who(payload), this.now()]);
    }

    static who(payload) {
        // with viewData the payload is {viewId, viewData}, without it a bare viewId string
        if (typeof payload === "string") return [payload, null];
        return [payload.viewId, payload.viewData ? payload.viewData.name : null];
    }
}
InteropCounter.register("InteropCounter");

class InteropView extends Croquet.View {
    constructor(model) {
        super(model);
        this.model = model;
    }

    inc(n) {
        this.publish("counter", "inc", { by: NAME, n });
    }
}

let session = null;
let stepTimer = null;
let nextInc = 0;
let trickleTimer = null;

function state() {
    const model = session && session.model;
    const view = session && session.view;
    return {
        type: "state",
        viewId: view ? view.viewId : null,
        count: model ? model.count : null,
        history: model ? JSON.parse(JSON.stringify(model.history)) : null,
        vmTime: view ? view.now() : null,
        initRanHere,
        sentIncs: nextInc,
        wire: JSON.parse(JSON.stringify(wire)),
    };
}

async function main() {
    const t0 = Date.now();
    session = await Croquet.Session.join({
        apiKey: "none",
        appId: cfg.appId,
        name: cfg.name,
        password: cfg.password,
        box: cfg.box,
        step: "manual",
        model: InteropCounter,
        view: InteropView,
        viewData: { name: NAME },
        autoSleep: false,
    });
    // With step: "manual" nothing simulates unless we step; 15 ms ≈ a 60 fps animation loop.
    stepTimer = setInterval(() => {
        try { session.step(Date.now()); } catch (e) { report({ type: "error", error: String(e && e.stack || e) }); }
    }, 15);
    report({ ...state(), type: "joined", joinMs: Date.now() - t0 });
}

async function sendIncs(count, spacingMs) {
    for (let i = 0; i < count; i++) {
        session.view.inc(nextInc++);
        // jittered spacing so the clients' sends interleave differently on every run
        const wait = spacingMs > 0 ? Math.floor(Math.random() * spacingMs * 2) : 0;
        await new Promise(r => setTimeout(r, wait));
    }
    report({ type: "sent", total: nextInc });
}

process.on("message", async msg => {
    try {
        switch (msg.cmd) {
            case "inc": await sendIncs(msg.count, msg.spacingMs ?? 10); break;
            case "state": report(state()); break;
            case "trickle":
                // one increment every msg.everyMs until "untrickle": keeps messages flowing so a
                // reflector that sends REQU per message keeps asking while the session ages
                clearInterval(trickleTimer);
                trickleTimer = setInterval(() => session.view.inc(nextInc++), msg.everyMs);
                break;
            case "untrickle":
                clearInterval(trickleTimer);
                report({ type: "sent", total: nextInc });
                break;
            case "snapshot":
                // Croquet's own debugging hook (Controller#requestDebugSnapshot): a snapshot poll
                // from this client, exactly like the one REQU or accumulated CPU time triggers.
                session.view.realm.controller.requestDebugSnapshot();
                report({ type: "snapshot-requested", vmTime: session.view.now() });
                break;
            case "leave": {
                const final = state();
                const closesBefore = wire.closes.length;
                await session.leave();
                clearInterval(stepTimer);
                // how did the socket close? (a reflector that completes the close handshake
                // makes the client see 1000; one that just drops the connection, 1006)
                const until = Date.now() + 3000;
                while (wire.closes.length === closesBefore && Date.now() < until) await new Promise(r => setTimeout(r, 20));
                report({ ...final, type: "left", leaveClose: wire.closes[closesBefore] || null });
                break;
            }
            case "exit":
                clearInterval(stepTimer);
                process.exit(0);
                break;
            default: report({ type: "error", error: `unknown command ${msg.cmd}` });
        }
    } catch (e) {
        report({ type: "error", error: String(e && e.stack || e) });
    }
});

// If the harness dies, do not linger.
process.on("disconnect", () => process.exit(0));

main().catch(e => {
    report({ type: "error", error: String(e && e.stack || e) });
    setTimeout(() => process.exit(1), 100);
});
