// One service of the conformance checkout, in its own Node process:
//   node service.js ROLE PROTOCOL ENDPOINT CASE
// It listens on a free port and tells its parent (IPC) the port; the parent
// tells it the other services' ports, then drives the checkouts. The mock
// payment channel (role "channel") is not instrumented, as a third party is
// not: it answers, then calls the payment service back without trace context.
// In the "grpc" case nothing is marked by hand (as in "plain") and the
// gateway reserves stock over gRPC (inventory.proto), both sides
// instrumented by @opentelemetry/instrumentation-grpc.
'use strict';

const [role, protocol, endpoint, scenario] = process.argv.slice(2);
// "skew_ahead" / "skew_behind": inventory's host clock is 500 ms ahead of
// (behind) the others'. The SDK starts a span at Date.now() and ends it a
// performance.now() duration later, so shifting Date.now shifts them all.
const skewMs = { skew_ahead: 500, skew_behind: -500 }[scenario];
if (skewMs && role === 'inventory') {
  const realNow = Date.now;
  Date.now = () => realNow() + skewMs;
}
const provider =
  role === 'channel' ? null : require('./otel').init(role, protocol, endpoint, scenario === 'grpc');

const http = require('http');
const express = require('express');
const api = require('@opentelemetry/api');
const { W3CTraceContextPropagator } = require('@opentelemetry/core');

const overGrpc = scenario === 'grpc';
const plain = scenario === 'plain' || overGrpc;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const tracer = api.trace.getTracer('paytrace-conformance');
let ports = {};

/** POSTs `body` as JSON to `port` and `path`; resolves to the status code. */
function post(port, path, body) {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body || {});
    const req = http.request(
      { host: '127.0.0.1', port, path, method: 'POST', headers: { 'content-type': 'application/json' } },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode));
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}

function get(port, path) {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    }).on('error', reject);
  });
}

/** The paytrace attributes a stage carries, from W3C baggage or the body. */
function business(extra) {
  if (plain) return {};
  const bag = api.propagation.getBaggage(api.context.active());
  const flowId = (extra && extra.flowId) || (bag && bag.getEntry('paytrace.flow_id')?.value);
  return { 'paytrace.flow': 'checkout', 'paytrace.flow_id': flowId };
}

/** Runs `work` inside a stage span (skipped in the plain scenario). */
async function stage(name, work, options) {
  if (plain) return work();
  const attributes = { 'paytrace.stage': name, ...business(options && options.body) };
  return tracer.startActiveSpan(name, { attributes, links: (options && options.links) || [] }, async (span) => {
    try {
      return await work();
    } finally {
      span.end();
    }
  });
}

/** The Inventory service definition of inventory.proto. */
function inventoryProto() {
  const grpc = require('@grpc/grpc-js');
  const loader = require('@grpc/proto-loader');
  const definition = loader.loadSync(require('path').join(__dirname, 'inventory.proto'));
  return { grpc, Inventory: grpc.loadPackageDefinition(definition).shop.v1.Inventory };
}

let inventoryClient = null;

/** Reserves over gRPC; resolves to 200, or 500 when inventory refused. */
function reserveOverGrpc(fail) {
  if (!inventoryClient) {
    const { grpc, Inventory } = inventoryProto();
    inventoryClient = new Inventory(`127.0.0.1:${ports.inventory_grpc}`, grpc.credentials.createInsecure());
  }
  return new Promise((resolve) => {
    inventoryClient.Reserve({ fail }, (err) => resolve(err ? 500 : 200));
  });
}

const app = express();
app.use(express.json());

if (role === 'gateway') {
  app.post('/checkout', async (req, res) => {
    const { flowId, fail } = req.body;
    if (scenario === 'long') {
      // An error text far over the aggregator's limit, on the root span.
      api.trace.getActiveSpan().setAttribute('paytrace.outcome', `error: ${'x'.repeat(4000)}`);
    }
    let ctx = api.context.active();
    if (!plain) {
      const bag = api.propagation.createBaggage({
        'paytrace.flow': { value: 'checkout' },
        'paytrace.flow_id': { value: flowId },
        'payment.method': { value: 'alipay' },
      });
      ctx = api.propagation.setBaggage(ctx, bag);
    }
    await api.context.with(ctx, async () => {
      await post(ports.order, '/orders', {});
      if (plain) await get(ports.inventory, '/stock/sku-1');
      const reserved = overGrpc ? await reserveOverGrpc(fail) : await post(ports.inventory, '/reserve', { fail });
      if (reserved >= 500) {
        res.status(502).send('inventory failed');
        return;
      }
      await post(ports.payment, '/pay', { flowId });
      res.status(200).send('ok');
    });
  });
} else if (role === 'order') {
  app.post('/orders', async (req, res) => {
    await stage('order.create', () => sleep(40));
    res.send('created');
  });
} else if (role === 'inventory') {
  app.get('/stock/:sku', async (req, res) => {
    await sleep(15);
    res.send('5');
  });
  app.post('/reserve', async (req, res) => {
    const failed = await stage('inventory.try', async () => {
      await sleep(60);
      return req.body.fail === true;
    });
    res.status(failed ? 500 : 200).send(failed ? 'out of stock' : 'reserved');
  });
} else if (role === 'payment') {
  app.post('/pay', async (req, res) => {
    let requestSpan = null;
    await stage('channel.request', async () => {
      requestSpan = api.trace.getActiveSpan();
      const carrier = {};
      new W3CTraceContextPropagator().inject(api.context.active(), carrier, api.defaultTextMapSetter);
      await post(ports.channel, '/pay', { flowId: req.body.flowId, traceparent: carrier.traceparent });
    });
    // Sends the notification in the background: never waited on.
    stage('notify.send', () => sleep(60));
    res.send('paying');
  });
  app.post('/callback', async (req, res) => {
    const { flowId, traceparent } = req.body;
    const linked = api.trace.getSpanContext(
      new W3CTraceContextPropagator().extract(api.ROOT_CONTEXT, { traceparent }, api.defaultTextMapGetter),
    );
    const links = !plain && linked ? [{ context: linked }] : [];
    await stage('channel.callback', () => sleep(30), { links, body: { flowId } });
    await stage('payment.confirm', () => sleep(20), { body: { flowId } });
    res.send('confirmed');
    process.send({ callback: flowId });
  });
} else if (role === 'channel') {
  app.post('/pay', async (req, res) => {
    await sleep(50);
    res.send('accepted');
    // The channel's asynchronous notification, 100 ms after it answered.
    setTimeout(() => post(ports.payment, '/callback', req.body).catch(() => {}), 100);
  });
}

/** Starts inventory's gRPC server on a free port; resolves to the port. */
function serveGrpc() {
  const { grpc, Inventory } = inventoryProto();
  const grpcServer = new grpc.Server();
  grpcServer.addService(Inventory.service, {
    Reserve: async (call, callback) => {
      await sleep(60);
      if (call.request.fail) callback({ code: grpc.status.FAILED_PRECONDITION, details: 'out of stock' });
      else callback(null, { state: 'reserved' });
    },
  });
  return new Promise((resolve, reject) => {
    grpcServer.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) =>
      err ? reject(err) : resolve(port),
    );
  });
}

const server = app.listen(0, '127.0.0.1', async () => {
  const grpcPort = overGrpc && role === 'inventory' ? await serveGrpc() : undefined;
  process.send({ port: server.address().port, grpcPort });
});

process.on('message', async (msg) => {
  if (msg.ports) ports = msg.ports;
  if (msg.shutdown) {
    server.close();
    if (provider) await provider.shutdown();
    process.exit(0);
  }
});
