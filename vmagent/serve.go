package main

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/meshvm/meshvm/pkg/mtls"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
	"github.com/meshvm/meshvm/vmagent/internal/server"
)

type serveCmd struct {
	g *globals
}

func (c *serveCmd) command() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the agent API over mutual TLS",
		Args:  cobra.NoArgs,
		RunE:  c.run,
	}
	cmd.Flags().StringVar(&c.g.overrides.Listen, "listen", "", "address to listen on (default from config, \":7443\")")
	return cmd
}

// shutdownGrace bounds how long in-flight calls (a large file) may finish.
const shutdownGrace = 10 * time.Second

func (c *serveCmd) run(cmd *cobra.Command, _ []string) error {
	cfg, log, err := c.g.load(cmd)
	if err != nil {
		return err
	}
	cert, key, clientCA, err := cfg.ReadTLS()
	if err != nil {
		return err
	}
	tlsCfg, err := mtls.ServerConfig(cert, key, clientCA)
	if err != nil {
		return fmt.Errorf("agent TLS: %w", err)
	}
	a, err := newAgent(cfg, log)
	if err != nil {
		return err
	}
	a.files.SweepInterrupted()
	guard := server.NewGuard(log, cfg.Limits)
	srv := grpc.NewServer(guard.Options(tlsCfg)...)
	agentv1.RegisterAgentServiceServer(srv, a.server(log))
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)

	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w: is another vmagent running? change listen in %s", cfg.Listen, err, c.g.configPath)
	}
	log.Info("serving", "addr", lis.Addr().String(), "root", cfg.Root)
	// READY only once the listener accepts, so `systemctl start` means reachable.
	daemon.SdNotify(false, daemon.SdNotifyReady)

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(guard.Listener(lis)) }()
	select {
	case err := <-errc:
		return err
	case <-cmd.Context().Done():
	}
	daemon.SdNotify(false, daemon.SdNotifyStopping)
	hs.Shutdown()
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(shutdownGrace):
		srv.Stop()
	}
	log.Info("stopped")
	return context.Canceled
}
