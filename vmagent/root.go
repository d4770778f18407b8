package main

import (
	"fmt"
	"log/slog"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/pkg/buildinfo"
	"github.com/meshvm/meshvm/pkg/fsroot"
	"github.com/meshvm/meshvm/vmagent/config"
	"github.com/meshvm/meshvm/vmagent/internal/agentstate"
	"github.com/meshvm/meshvm/vmagent/internal/capture"
	"github.com/meshvm/meshvm/vmagent/internal/dnscheck"
	"github.com/meshvm/meshvm/vmagent/internal/postinst"
	"github.com/meshvm/meshvm/vmagent/internal/server"
	"github.com/meshvm/meshvm/vmagent/internal/sidecar"
	"github.com/meshvm/meshvm/vmagent/internal/sysusers"
	"github.com/meshvm/meshvm/vmagent/internal/vmfiles"
)

// globals are the flags every command shares.
type globals struct {
	configPath string
	overrides  config.Overrides
}

func (g *globals) load(cmd *cobra.Command) (config.Config, *slog.Logger, error) {
	cfg, err := config.Load(g.configPath, cmd.Flags().Changed("config"), g.overrides)
	if err != nil {
		return config.Config{}, nil, err
	}
	var level slog.Level
	level.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
	return cfg, log, nil
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "vmagent",
		Short:         "The meshvm agent: Istio sidecar install and control on a VM",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.configPath, "config", config.DefaultPath, "config file")
	root.PersistentFlags().StringVar(&g.overrides.Root, "root", "", "directory standing for / of the managed machine (tests)")
	root.PersistentFlags().StringVar(&g.overrides.LogLevel, "log-level", "", "debug, info, warn or error")
	root.AddCommand((&serveCmd{g: g}).command(), versionCmd(), (&doctorCmd{g: g}).command(), (&sidecarCmd{g: g}).command())
	return root
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the agent version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "vmagent %s (%s, %s/%s)\n", buildinfo.String(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}

// agent is everything the server and the doctor need, wired once.
type agent struct {
	capture   *capture.Checker
	root      *fsroot.Root
	users     *sysusers.DB
	installer *postinst.Installer
	files     *vmfiles.Store
	sidecar   *sidecar.Manager
	dns       dnscheck.Resolver
}

func newAgent(cfg config.Config, log *slog.Logger) (*agent, error) {
	root, err := fsroot.New(cfg.Root)
	if err != nil {
		return nil, err
	}
	users := sysusers.New(root)
	state := agentstate.New(root)
	sc := sidecar.New(log.With("subsystem", "sidecar"), sidecar.Options{Root: cfg.Root})
	var reloader postinst.Reloader
	if cfg.Root == "/" {
		reloader = sc
	}
	return &agent{
		root:  root,
		users: users,
		installer: postinst.New(log.With("subsystem", "install"), postinst.Options{
			Root: root, Users: users, State: state, AgentPath: cfg.AgentPath, Systemd: reloader,
		}),
		files:   vmfiles.NewStore(log.With("subsystem", "files"), root, users, state),
		sidecar: sc,
		dns:     dnscheck.DefaultResolver(cfg.Root),
		// A listen address without a port leaves the agent's exemption unchecked.
		capture: &capture.Checker{Root: root, EnvPath: postinst.SidecarEnvPath, AgentPort: listenPort(cfg.Listen)},
	}, nil
}

func (a *agent) server(log *slog.Logger) *server.Server {
	return server.New(log, server.Deps{Root: a.root, Installer: a.installer, Files: a.files, Sidecar: a.sidecar, DNS: a.dns, Capture: a.capture})
}
