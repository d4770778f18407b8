// Package cli is hostctl's terminal: cobra commands (one file per noun-verb)
// that parse flags, run pkg/host/fleet, print its progress and results, and
// map errors to exit codes.
package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/pkg/buildinfo"
	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/report"
)

// globals are the flags every command shares.
type globals struct {
	configPath string
	provider   string
	kubeconfig string
	agentDir   string
	// recalled says configPath is the one up was last given (remember.go).
	recalled, recallDone bool
}

// load merges defaults, the config file, MESHVM_* variables and flags (or
// the site up was last given, when none picks one). A config that does not
// load is a usage error: fixing it is the way on.
func (g *globals) load(cmd *cobra.Command) (config.Config, error) {
	if err := g.recall(cmd); err != nil {
		return config.Config{}, usageError{err}
	}
	cfg, err := config.Load(g.configPath, cmd.Flags().Changed("config") || g.recalled, g.getenv)
	if err != nil {
		return cfg, usageError{err}
	}
	return cfg, nil
}

// getenv layers the flags over the environment: each stands for its
// MESHVM_* variable. --kubeconfig alone means "use that cluster".
func (g *globals) getenv(name string) string {
	switch {
	case name == "MESHVM_PROVIDER" && g.provider != "":
		return g.provider
	case name == "MESHVM_PROVIDER" && g.kubeconfig != "":
		return string(config.Kubeconfig)
	case name == "MESHVM_KUBECONFIG" && g.kubeconfig != "":
		return absPath(g.kubeconfig)
	case name == "MESHVM_AGENT_DIR" && g.agentDir != "":
		return absPath(g.agentDir)
	}
	return os.Getenv(name)
}

// absPath makes a path given on the command line absolute: the config
// resolves relative paths against its own directory, not the shell's.
func absPath(p string) string {
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return p
}

// flags binds the shared flags. --config, --provider and --kubeconfig pick
// the site; without them, commands take the one up was last given.
func (g *globals) flags(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringVar(&g.configPath, "config", config.DefaultFile, "config file (defaults apply to every field it leaves out); without --config, --provider and --kubeconfig, those hostctl up was last given")
	f.StringVar(&g.provider, "provider", "", "override cluster.provider: "+strings.Join(providers, "|"))
	f.StringVar(&g.kubeconfig, "kubeconfig", "", "use the existing cluster this kubeconfig reaches (cluster.provider kubeconfig): hostctl provisions no cluster")
}

// providers are cluster.provider's values, for completion.
var providers = []string{string(config.Lab), string(config.Multipass), string(config.SSH), string(config.Kubeconfig)}

// New returns the hostctl command tree.
func New() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "hostctl",
		Short:         "Join virtual machines to an Istio service mesh",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	g.flags(root)
	root.PersistentFlags().StringVar(&g.agentDir, "vmagent-dir", "", "install the vmagent-linux-ARCH binaries of this directory instead of the ones built into hostctl (agent.dir)")
	_ = root.MarkPersistentFlagDirname("vmagent-dir")
	_ = root.RegisterFlagCompletionFunc("provider", cobra.FixedCompletions(providers, cobra.ShellCompDirectiveNoFileComp))
	root.AddCommand(versionCommand())
	cfg := &cobra.Command{Use: "config", Short: "Show the configuration in effect"}
	cfg.AddCommand((&configShowCmd{g: g}).command())
	vm := &cobra.Command{Use: "vm", Short: "Add, onboard, inspect, start, stop and remove VMs"}
	vm.AddCommand((&vmStatusCmd{g: g}).command())
	vm.AddCommand(vmCommands(g)...)
	cluster, istio := clusterCommands(g)
	fleet := fleetCommand(g)
	fleet.AddCommand(fleetInstallCommands(g)...)
	root.AddCommand(cfg, vm, cluster, istio, fleet, (&upCmd{g: g}).command(), (&downCmd{g: g}).command(), (&verifyCmd{g: g}).command(),
		(&doctorCmd{vmCmd: vmCmd{g: g}}).command())
	strictUsage(root)
	adviseErrors(root)
	return root
}

func versionCommand() *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the hostctl version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := struct {
				Version string `json:"version"`
				Go      string `json:"go"`
				OS      string `json:"os"`
				Arch    string `json:"arch"`
			}{buildinfo.String(), runtime.Version(), runtime.GOOS, runtime.GOARCH}
			if ok, err := report.Encode(cmd.OutOrStdout(), format, v); ok {
				return err
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "hostctl %s (%s, %s/%s)\n", v.Version, v.Go, v.OS, v.Arch)
			return err
		},
	}
	return outputFlag(cmd, &format, "text", "json", "yaml")
}

// completeVMs completes the config's VM names not already given, up to
// max arguments (0: any number).
func (g *globals) completeVMs(max int) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		if max > 0 && len(args) >= max {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		cfg, err := g.load(cmd)
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		var names []string
		for _, vm := range cfg.VMs {
			if !slices.Contains(args, vm.Name) {
				names = append(names, vm.Name)
			}
		}
		return names, cobra.ShellCompDirectiveNoFileComp
	}
}
