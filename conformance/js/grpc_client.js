// A gRPC caller as a Node service makes one: @grpc/grpc-js, instrumented by
// the OpenTelemetry JS SDK's gRPC instrumentation with the W3C trace
// context and baggage propagators. Calls grpc.health.v1.Health/Check on
// ADDRESS inside a span of its own and a flow's baggage, and prints the
// span's trace id and the call's status code as JSON.
//
//   node grpc_client.js ADDRESS SERVICE
'use strict';

const [address, service] = process.argv.slice(2);
const provider = require('./otel').init('js-caller', 'none', undefined, true);

const path = require('path');
const api = require('@opentelemetry/api');
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');

const definition = loader.loadSync(path.join(__dirname, 'health.proto'));
const { Health } = grpc.loadPackageDefinition(definition).grpc.health.v1;
const client = new Health(address, grpc.credentials.createInsecure());

api.trace.getTracer('caller').startActiveSpan('checkout', (span) => {
  const bag = api.propagation.createBaggage({
    'paytrace.flow': { value: 'checkout' },
    'paytrace.flow_id': { value: 'ord_js_grpc' },
    'payment.method': { value: 'card' },
  });
  api.context.with(api.propagation.setBaggage(api.context.active(), bag), () => {
    client.Check({ service: service || '' }, (err) => {
      span.end();
      console.log(JSON.stringify({ traceId: span.spanContext().traceId, code: err ? err.code : 0 }));
      client.close();
      provider.shutdown().finally(() => process.exit(0));
    });
  });
});
