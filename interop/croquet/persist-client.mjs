// One real @croquet/croquet 2.0.4 Node client of one *code version* of an app that persists
// its state (Model#persistSession), forked by persist.mjs (IPC channel required).
//
// Config comes from the environment (set by persist.mjs):
//   CROQUET_BOX, CROQUET_APP_ID, CROQUET_SESSION, CROQUET_PASSWORD, CLIENT_NAME,
//   APP_VERSION ("1" or "2": which model class is registered; Croquet's session id includes
//   a hash of the registered model classes' code, so each version is its own session, while
//   the persistentId (from appId + name) is the same for both).
// The parent drives it with IPC commands ({cmd: "inc" | "save" | "state" | "leave" | "exit"})
// and gets JSON reports back ({type: "joined" | "sent" | "state" | "left" | "error", ...}).

import { createRequire } from "node:module";

// The 2.0.4 Node build resolves `box=`/`files=` against window.location, which Node lacks
// (see client.mjs).
globalThis.window = { location: "http://localhost/" };

const require = createRequire(import.meta.url);

const NAME = process.env.CLIENT_NAME;
const VERSION = process.env.APP_VERSION;
const cfg = {
    box: process.env.CROQUET_BOX,
    appId: process.env.CROQUET_APP_ID,
    name: process.env.CROQUET_SESSION,
    password: process.env.CROQUET_PASSWORD,
};

function report(msg) {
    if (process.connected) process.send({ name: NAME, ...msg });
}

// Wire tap (as in client.mjs): every frame the library sends and receives through the `ws`
// package's WebSocket, observed without changing anything.
const wire = { joins: 0, syncs: [], saves: [], closes: [], recvSeqGaps: 0, lastRecvSeq: null };
{
    const { WebSocket } = require("ws");
    const origSend = WebSocket.prototype.send;
    WebSocket.prototype.send = function (data, ...rest) {
        if (typeof data === "string") {
            try {
                const m = JSON.parse(data);
                if (m.action === "JOIN") wire.joins++;
                if (m.action === "SAVE") wire.saves.push({ ...m.args, at: Date.now() });
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
                    if (m.action === "SYNC") {
                        const a = m.args;
                        wire.syncs.push({
                            url: a.url, persisted: a.persisted === true, time: a.time, seq: a.seq,
                            messages: a.messages.length, snapshotSeq: a.snapshotSeq, sessionId: m.id,
                        });
                        wire.lastRecvSeq = a.seq;
                    } else if (m.action === "RECV") {
                        const seq = m.args[1];
                        if (wire.lastRecvSeq !== null && seq !== ((wire.lastRecvSeq + 1) >>> 0)) wire.recvSeqGaps++;
                        wire.lastRecvSeq = seq;
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

// Not replicated, diagnostic only: did *this process* run the root model's init(), and with
// which persisted data? A client that joins a running session must not run it.
let initHere = null;

// Version 1: counts, and persists its count and history when told to.
class CounterV1 extends Croquet.Model {
    init(options, persisted) {
        initHere = { persisted: persisted === undefined ? null : JSON.parse(JSON.stringify(persisted)) };
        this.count = 0;
        this.history = [];
        this.subscribe("counter", "inc", this.increment);
        this.subscribe("counter", "save", this.save);
    }

    increment(data) {
        this.count += 1;
        this.history.push([data.by, data.n, this.count]);
    }

    save() {
        // The first persistSession of a synced session is voted on, uploaded and SAVEd at
        // once (later ones wait out a 25 s cool-off): hence one explicit save.
        this.persistSession(() => ({ format: "counter/1", count: this.count, history: this.history }));
    }
}

// Version 2: a different model (so a different session), which starts from version 1's data.
class CounterV2 extends Croquet.Model {
    init(options, persisted) {
        initHere = { persisted: persisted === undefined ? null : JSON.parse(JSON.stringify(persisted)) };
        this.count = persisted ? persisted.count : 0;
        this.history = persisted ? persisted.history.map(e => [...e, "v1"]) : [];
        this.subscribe("counter", "inc", this.increment);
    }

    increment(data) {
        this.count += 1;
        this.history.push([data.by, data.n, this.count, "v2"]);
    }
}

const Counter = VERSION === "1" ? CounterV1 : CounterV2;
Counter.register("PersistCounter");

class CounterView extends Croquet.View {
    constructor(model) {
        super(model);
        this.model = model;
    }

    inc(n) {
        this.publish("counter", "inc", { by: NAME, n });
    }

    save() {
        this.publish("counter", "save");
    }
}

let session = null;
let stepTimer = null;
let nextInc = 0;

function state() {
    const model = session && session.model;
    return {
        type: "state",
        version: VERSION,
        sessionId: session ? session.id : null,
        viewId: session && session.view ? session.view.viewId : null,
        count: model ? model.count : null,
        history: model ? JSON.parse(JSON.stringify(model.history)) : null,
        initHere,
        sentIncs: nextInc,
        wire: JSON.parse(JSON.stringify(wire)),
    };
}

async function main() {
    if (VERSION !== "1" && VERSION !== "2") throw new Error(`APP_VERSION must be 1 or 2, got ${VERSION}`);
    session = await Croquet.Session.join({
        apiKey: "none",
        appId: cfg.appId,
        name: cfg.name,
        password: cfg.password,
        box: cfg.box,
        step: "manual",
        model: Counter,
        view: CounterView,
        autoSleep: false,
    });
    stepTimer = setInterval(() => {
        try { session.step(Date.now()); } catch (e) { report({ type: "error", error: String(e && e.stack || e) }); }
    }, 15);
    report({ ...state(), type: "joined" });
}

process.on("message", async msg => {
    try {
        switch (msg.cmd) {
            case "inc":
                for (let i = 0; i < msg.count; i++) {
                    session.view.inc(nextInc++);
                    await new Promise(r => setTimeout(r, Math.floor(Math.random() * 20)));
                }
                report({ type: "sent", total: nextInc });
                break;
            case "save": session.view.save(); report({ type: "save-asked" }); break;
            case "state": report(state()); break;
            case "leave": {
                const final = state();
                await session.leave();
                clearInterval(stepTimer);
                report({ ...final, type: "left" });
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

process.on("disconnect", () => process.exit(0));

main().catch(e => {
    report({ type: "error", error: String(e && e.stack || e) });
    setTimeout(() => process.exit(1), 100);
});
