package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/host/statedir"
)

type downCmd struct {
	g           *globals
	keepCluster bool
}

func (c *downCmd) command() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Remove the VMs and the cluster up created",
		Args:  cobra.NoArgs,
		RunE:  c.run,
	}
	cmd.Flags().BoolVar(&c.keepCluster, "keep-cluster", false, "remove the VMs but keep the cluster")
	return cmd
}

func (c *downCmd) run(cmd *cobra.Command, _ []string) error {
	cfg, state, s, err := c.g.open(cmd)
	if err != nil {
		return err
	}
	// All at once, as up brings them: each waits for its machine's shutdown.
	var out sync.Mutex
	err = eachVM(cfg.VMs, func(vm config.VM) error {
		how, err := removeVM(cmd.Context(), cfg, state, s, vm.Name)
		if err != nil {
			return err
		}
		out.Lock()
		fmt.Fprintf(cmd.ErrOrStderr(), "down: VM %s %s\n", vm.Name, how)
		out.Unlock()
		// Its certificate and workload files belonged to that machine and cluster.
		return os.RemoveAll(state.Path("vms", vm.Name))
	})
	if !c.keepCluster {
		if derr := s.downCluster(cmd.Context(), newProgress(cmd.ErrOrStderr(), "cluster"), err == nil); derr != nil {
			err = errors.Join(err, derr)
		}
	}
	if err == nil && !c.keepCluster {
		// The site is gone: the next command without flags takes the defaults.
		err = c.g.forget(cmd)
	}
	return err
}

// removeVM deletes a VM hostctl created; one brought over SSH is not ours to
// delete: the agent reverts what it did and is removed itself. It says
// which happened.
func removeVM(ctx context.Context, cfg config.Config, state *statedir.Dir, s site, name string) (string, error) {
	if cfg.MachineProvider() != config.SSH {
		return "deleted", s.machines().Delete(ctx, name)
	}
	m, err := s.machines().Info(ctx, name)
	if err != nil {
		return "", err
	}
	if _, err := removeApp(ctx, s.machines(), name); err != nil {
		return "", err
	}
	return "left as it was before up (hostctl's app, sidecar, postinst and agent removed; the machine is yours)",
		onboard.RemoveAgent(ctx, onboard.Deps{Provider: s.machines(), State: state}, m)
}
