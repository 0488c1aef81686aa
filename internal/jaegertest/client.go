package jaegertest

import (
	"context"
	"net"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	"github.com/ambit-mesh/ambit/internal/netnsx"
)

// ClientTracer is the test's own tracer, service e2e-client, exporting by
// OTLP/gRPC to endpoint (host:port), dialled from inside the network
// namespace netns: a client span of the test is the root of the trace the
// mesh continues. flush sends the spans ended so far; the exporter shuts
// down when the test ends. scope names the tracer (the test's package).
func ClientTracer(t interface {
	Fatal(...any)
	Cleanup(func())
}, netns, endpoint, scope string) (tracer trace.Tracer, flush func() error) {
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		var c net.Conn
		err := netnsx.Do(netns, func() (err error) {
			var d net.Dialer
			c, err = d.DialContext(ctx, "tcp", addr)
			return err
		})
		return c, err
	}
	exp, err := otlptracegrpc.New(context.Background(), otlptracegrpc.WithEndpoint(endpoint), otlptracegrpc.WithInsecure(),
		otlptracegrpc.WithDialOption(grpc.WithContextDialer(dial)))
	if err != nil {
		t.Fatal(err)
	}
	p := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", "e2e-client"))))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p.Shutdown(ctx)
	})
	flush = func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return p.ForceFlush(ctx)
	}
	return p.Tracer(scope), flush
}
