// Package cli holds hostctl's cobra commands, one file per noun-verb.
package cli

import (
	"fmt"
	"os"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/hostctl/config"
	"github.com/meshvm/meshvm/pkg/buildinfo"
)

// globals are the flags every command shares.
type globals struct {
	configPath string
}

// load merges defaults, the config file, MESHVM_* variables and flags.
func (g *globals) load(cmd *cobra.Command) (config.Config, error) {
	return config.Load(g.configPath, cmd.Flags().Changed("config"), os.Getenv)
}

// New returns the hostctl command tree.
func New() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "hostctl",
		Short:         "Join virtual machines to an Istio service mesh",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.configPath, "config", config.DefaultFile, "config file (defaults apply to every field it leaves out)")
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the hostctl version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "hostctl %s (%s, %s/%s)\n", buildinfo.String(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	})
	cfg := &cobra.Command{Use: "config", Short: "Show the configuration in effect"}
	cfg.AddCommand((&configShowCmd{g: g}).command())
	vm := &cobra.Command{Use: "vm", Short: "Add, onboard, inspect, start, stop and remove VMs"}
	vm.AddCommand((&vmStatusCmd{g: g}).command())
	vm.AddCommand(vmCommands(g)...)
	cluster, istio := clusterCommands(g)
	root.AddCommand(cfg, vm, cluster, istio, (&upCmd{g: g}).command(), (&downCmd{g: g}).command(), (&verifyCmd{g: g}).command(),
		(&doctorCmd{vmCmd: vmCmd{g: g}}).command())
	return root
}
