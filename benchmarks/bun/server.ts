// The benchmark app on WS-Kit under Bun: the same messages as benchmarks/app.py, validated
// with Zod. Started by the benchmark runner: `bun run server.ts <port>`; prints
// "READY <port>" once listening.
import { createBunHandler } from "@ws-kit/bun";
import { memoryPubSub } from "@ws-kit/memory";
import { withPubSub } from "@ws-kit/pubsub";
import { createRouter, message, rpc, withZod, z } from "@ws-kit/zod";

const Echo = message("ECHO", { text: z.string(), n: z.number() });
const Echoed = message("ECHOED", { text: z.string(), n: z.number() });
const GetItem = rpc("GET_ITEM", { id: z.string() }, "ITEM", { id: z.string(), n: z.number() });
const Subscribe = message("SUBSCRIBE", { topic: z.string() });
const Subscribed = message("SUBSCRIBED", { topic: z.string() });
const Publish = message("PUBLISH", { topic: z.string(), seq: z.number() });
const News = message("NEWS", { seq: z.number() });

const port = Number(process.argv[2] ?? "0");

// WS-Kit's in-process pub/sub. (Its Bun-native adapter, bunPubSub, only reaches
// sockets that called Bun's ws.subscribe(), which ctx.topics.subscribe does not do
// in WS-Kit 0.10, so nothing would be delivered.)
const router = createRouter()
  .plugin(withZod())
  .plugin(withPubSub({ adapter: memoryPubSub() }))
  .on(Echo, (ctx) => {
    ctx.send(Echoed, { text: ctx.payload.text, n: ctx.payload.n });
  })
  .rpc(GetItem, (ctx) => {
    ctx.reply({ id: ctx.payload.id, n: 1 });
  })
  .on(Subscribe, async (ctx) => {
    await ctx.topics.subscribe(ctx.payload.topic);
    ctx.send(Subscribed, { topic: ctx.payload.topic });
  })
  .on(Publish, async (ctx) => {
    await ctx.publish(ctx.payload.topic, News, { seq: ctx.payload.seq });
  });

// WS-Kit: "call router.pubsub.init() after routes are registered, before traffic".
await router.pubsub.init();
const { fetch, websocket } = createBunHandler(router);
const server = Bun.serve({ hostname: "127.0.0.1", port, fetch, websocket });
console.log(`READY ${server.port}`);
