package main

import (
	"fmt"
	"net"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/pkg/fsroot"
	"github.com/meshvm/meshvm/vmagent/internal/agentstate"
	"github.com/meshvm/meshvm/vmagent/internal/sidecarenv"
	"github.com/meshvm/meshvm/vmagent/internal/sysusers"
)

// sidecarCmd holds the root-side hooks of the istio unit (ExecStartPre and
// ExecStopPost); people do not run them by hand.
type sidecarCmd struct {
	g *globals
}

func (c *sidecarCmd) command() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sidecar",
		Short: "Hooks the istio unit runs as root before start and after stop",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "prepare",
		Short: "Restore the token and the hosts block, write the sidecar environment, install the capture rules",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := c.preparer(cmd)
			if err != nil {
				return err
			}
			return p.Prepare(cmd.Context())
		},
	}, &cobra.Command{
		Use:   "cleanup",
		Short: "Remove the capture rules",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := c.preparer(cmd)
			if err != nil {
				return err
			}
			return p.Cleanup(cmd.Context())
		},
	})
	return cmd
}

func (c *sidecarCmd) preparer(cmd *cobra.Command) (*sidecarenv.Preparer, error) {
	cfg, log, err := c.g.load(cmd)
	if err != nil {
		return nil, err
	}
	root, err := fsroot.New(cfg.Root)
	if err != nil {
		return nil, err
	}
	_, port, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen %q: %w", cfg.Listen, err)
	}
	agentPort, err := strconv.Atoi(port)
	if err != nil {
		return nil, fmt.Errorf("listen %q: port %q is not a number", cfg.Listen, port)
	}
	return &sidecarenv.Preparer{Log: log, Root: root, Users: sysusers.New(root), State: agentstate.New(root), AgentPort: agentPort}, nil
}

// listenPort is the port of a listen address, 0 when it has none.
func listenPort(listen string) int {
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(port)
	return n
}
