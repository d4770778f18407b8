// Package cli holds hostctl's cobra commands, one file per noun-verb.
package cli

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/pkg/buildinfo"
)

// New returns the hostctl command tree. Cluster, Istio and VM commands
// arrive with their issue; today hostctl only reports its version.
func New() *cobra.Command {
	root := &cobra.Command{
		Use:           "hostctl",
		Short:         "Join virtual machines to an Istio service mesh",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the hostctl version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "hostctl %s (%s, %s/%s)\n", buildinfo.String(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	})
	return root
}
