// vmagent runs on a mesh VM: it replaces the istio-sidecar package's
// postinst and answers hostctl over mutually authenticated gRPC.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	signal.Ignore(syscall.SIGPIPE)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "vmagent:", err)
		os.Exit(1)
	}
}
