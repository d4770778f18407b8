package cli

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/fleet"
)

type upCmd struct {
	g       *globals
	timeout time.Duration
}

func (c *upCmd) command() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Converge the cluster, Istio, the workload and every VM, onboarded and Healthy",
		Long: "up provisions what is missing and leaves what is in place: running it again on a healthy setup\n" +
			"changes nothing and says so. It never deletes a cluster or a VM to make progress.",
		Args: cobra.NoArgs,
		RunE: c.run,
	}
	cmd.Flags().DurationVar(&c.timeout, "timeout", 0, "give up after this long (default 30m with Multipass, 10m otherwise; the first lab build takes longer: raise it)")
	return cmd
}

// progress prints "[n/N] step VM: detail (elapsed)" lines to stderr; the
// steps are named up front so every line says how far along it is.
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	steps []string
	start time.Time
}

func newProgress(w io.Writer, steps ...string) *progress {
	return &progress{w: w, steps: steps, start: time.Now()}
}

// Step prints one line: a step of the work, for one VM or none.
func (p *progress) Step(name, vm, format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := slices.Index(p.steps, name) + 1
	if vm != "" {
		name += " " + vm
	}
	fmt.Fprintf(p.w, "[%d/%d] %s: %s (%s)\n", n, len(p.steps), name, fmt.Sprintf(format, args...), time.Since(p.start).Round(100*time.Millisecond))
}

func (c *upCmd) run(cmd *cobra.Command, _ []string) error {
	f, err := c.g.open(cmd)
	if err != nil {
		return err
	}
	// Before anything starts: a failed up is still the site down must find.
	if err := c.g.remember(cmd); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), upTimeout(c.timeout, f.Config))
	defer cancel()
	return f.Up(ctx, newProgress(cmd.ErrOrStderr(), fleet.UpSteps...), cmd.ErrOrStderr())
}

// upTimeout is --timeout, else what a first up needs: on Multipass an image
// download, three launches, k3s and Istio's images (30m); elsewhere 10m.
func upTimeout(flag time.Duration, cfg config.Config) time.Duration {
	switch {
	case flag > 0:
		return flag
	case cfg.Cluster.Provider == config.Multipass || cfg.MachineProvider() == config.Multipass:
		return 30 * time.Minute
	}
	return 10 * time.Minute
}
