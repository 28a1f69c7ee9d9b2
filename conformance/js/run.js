// Starts the five services of the conformance checkout, each a Node process
// with its own OpenTelemetry JS SDK, runs FLOWS checkouts through the
// gateway one after another, waits for the channel's callbacks, and shuts
// every SDK down (flushing its spans).
//
//   node run.js CASE PROTOCOL ENDPOINT FLOWS
//
// CASE: overlap | link | failures | long | late | plain | grpc | skew_ahead |
// skew_behind (inventory's clock 500 ms ahead, behind). In "failures" 2 of
// every 5 checkouts fail at inventory.try. PROTOCOL: grpc | http/protobuf |
// http/json. ENDPOINT: the OTLP base URL (http://127.0.0.1:4318 or :4317).
'use strict';

const { fork } = require('child_process');
const http = require('http');
const path = require('path');

const [scenario, protocol, endpoint, flowsArg] = process.argv.slice(2);
const flows = Number(flowsArg || 20);
const roles = ['gateway', 'order', 'inventory', 'payment', 'channel'];

function start(role) {
  const child = fork(path.join(__dirname, 'service.js'), [role, protocol, endpoint, scenario]);
  const port = new Promise((resolve, reject) => {
    child.once('message', (m) => resolve(m));
    child.once('exit', (code) => reject(new Error(`${role} exited with ${code}`)));
  });
  return { role, child, port };
}

function checkout(port, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, path: '/checkout', method: 'POST', headers: { 'content-type': 'application/json' } },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode));
      },
    );
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

async function main() {
  const services = roles.map(start);
  const ports = {};
  for (const s of services) {
    const m = await s.port;
    ports[s.role] = m.port;
    if (m.grpcPort) ports[`${s.role}_grpc`] = m.grpcPort;
  }
  for (const s of services) s.child.send({ ports });
  const payment = services.find((s) => s.role === 'payment').child;
  let callbacks = 0;
  payment.on('message', (m) => {
    if (m.callback !== undefined) callbacks += 1;
  });
  let expected = 0;
  let failed = 0;
  for (let i = 0; i < flows; i++) {
    const fail = scenario === 'failures' && i % 5 < 2;
    const status = await checkout(ports.gateway, { flowId: `ord_js_${scenario}_${i}`, fail });
    if (status >= 500) failed += 1;
    else expected += 1;
  }
  // The channel calls back 100 ms after it answered: wait for every callback.
  const deadline = Date.now() + 30000;
  while (callbacks < expected && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  for (const s of services) s.child.send({ shutdown: true });
  await Promise.all(services.map((s) => new Promise((resolve) => s.child.on('exit', resolve))));
  console.log(JSON.stringify({ flows, failed, callbacks }));
  if (callbacks < expected) process.exit(2);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
