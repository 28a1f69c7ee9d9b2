// A RabbitMQ consumer as a Node service makes one: amqplib, instrumented by
// the OpenTelemetry JS SDK's amqplib instrumentation with the W3C trace
// context and baggage propagators. Takes one message from QUEUE at URL,
// acknowledges it, and prints as JSON what the SDK made of it: the trace
// and parent of the CONSUMER span it opened, and the flow's baggage it sees
// while handling the message.
//
//   node amqp_consumer.js URL QUEUE
'use strict';

const [url, queue] = process.argv.slice(2);
const provider = require('./otel').init('js-consumer', 'none', undefined, false, true);

const api = require('@opentelemetry/api');
const amqp = require('amqplib');

function fail(error) {
  console.error(error && error.stack ? error.stack : String(error));
  process.exit(1);
}

(async () => {
  const connection = await amqp.connect(url);
  const channel = await connection.createChannel();
  await channel.consume(queue, (msg) => {
    if (msg === null) {
      fail(new Error('the consumer was cancelled'));
      return;
    }
    const span = api.trace.getActiveSpan();
    const bag = api.propagation.getBaggage(api.context.active());
    const entry = (key) => (bag && bag.getEntry(key) ? bag.getEntry(key).value : null);
    // SDK 2 and later name the parent `parentSpanContext`; earlier ones
    // `parentSpanId`.
    const parent = span && (span.parentSpanContext ? span.parentSpanContext.spanId : span.parentSpanId);
    console.log(JSON.stringify({
      traceId: span ? span.spanContext().traceId : null,
      parentSpanId: parent || null,
      kind: span ? span.kind : null,
      flow: entry('paytrace.flow'),
      flowId: entry('paytrace.flow_id'),
      paymentChannel: entry('payment.channel'),
      messageId: msg.properties.messageId || null,
      body: msg.content.toString(),
    }));
    channel.ack(msg);
    channel
      .close()
      .then(() => connection.close())
      .then(() => provider.shutdown())
      .then(() => process.exit(0), fail);
  });
})().catch(fail);
