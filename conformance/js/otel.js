// The OpenTelemetry JS SDK set up as a Node service sets it up: W3C trace
// context and baggage, automatic HTTP, Express, gRPC (@grpc/grpc-js) and
// RabbitMQ (amqplib) instrumentation, a batch processor and one OTLP
// exporter. Must be required before http, express, @grpc/grpc-js and amqplib.
'use strict';

const api = require('@opentelemetry/api');
const { TracerProvider, BatchSpanProcessor } = require('@opentelemetry/sdk-trace');
const { AsyncLocalStorageContextManager } = require('@opentelemetry/context-async-hooks');
const {
  CompositePropagator,
  W3CBaggagePropagator,
  W3CTraceContextPropagator,
} = require('@opentelemetry/core');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { registerInstrumentations } = require('@opentelemetry/instrumentation');
const { HttpInstrumentation } = require('@opentelemetry/instrumentation-http');
const { ExpressInstrumentation } = require('@opentelemetry/instrumentation-express');
const { GrpcInstrumentation } = require('@opentelemetry/instrumentation-grpc');
const { AmqplibInstrumentation } = require('@opentelemetry/instrumentation-amqplib');

function exporter(protocol, endpoint) {
  switch (protocol) {
    case 'grpc': {
      const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-grpc');
      return new OTLPTraceExporter({ url: endpoint });
    }
    case 'http/protobuf': {
      const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-proto');
      return new OTLPTraceExporter({ url: `${endpoint}/v1/traces` });
    }
    case 'http/json': {
      const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-http');
      return new OTLPTraceExporter({ url: `${endpoint}/v1/traces` });
    }
    default:
      throw new Error(`unknown OTLP protocol ${protocol}`);
  }
}

/**
 * Installs the SDK for `serviceName`; returns the provider (to shut down).
 * `grpc`: also instrument @grpc/grpc-js (only where a case calls over gRPC,
 * so the other cases run as they did before it); `amqp`: also amqplib.
 */
function init(serviceName, protocol, endpoint, grpc, amqp) {
  api.context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  api.propagation.setGlobalPropagator(
    new CompositePropagator({
      propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()],
    }),
  );
  // @opentelemetry/sdk-node reads OTEL_BSP_SCHEDULE_DELAY for its users; the
  // bare TracerProvider takes it as an option.
  const delay = Number(process.env.OTEL_BSP_SCHEDULE_DELAY || 5000);
  // Protocol "none": spans are made and propagated but exported nowhere
  // (a caller whose own spans the test does not need).
  const spanProcessors =
    protocol === 'none'
      ? []
      : [new BatchSpanProcessor({ exporter: exporter(protocol, endpoint), scheduledDelayMillis: delay })];
  const provider = new TracerProvider({
    resource: resourceFromAttributes({ 'service.name': serviceName }),
    spanProcessors,
  });
  api.trace.setGlobalTracerProvider(provider);
  registerInstrumentations({
    instrumentations: [
      new HttpInstrumentation(),
      new ExpressInstrumentation(),
      ...(grpc ? [new GrpcInstrumentation()] : []),
      ...(amqp ? [new AmqplibInstrumentation()] : []),
    ],
  });
  return provider;
}

module.exports = { init };
