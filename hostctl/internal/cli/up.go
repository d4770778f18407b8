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
	"github.com/meshvm/meshvm/pkg/host/progress"
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

// lines renders the progress channel on stderr: a step's event as
// "[n/N] step VM: detail (elapsed)", the steps named up front so every
// line says how far along it is; an event of no step as the command's
// prefix and its message. Advice on an event's cause follows its message.
type lines struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	steps  []progress.Step
	start  time.Time
}

func newLines(w io.Writer, prefix string, steps ...progress.Step) *lines {
	return &lines{w: w, prefix: prefix, steps: steps, start: time.Now()}
}

// newProgress is the lines of a command that reports steps.
func newProgress(w io.Writer, steps ...progress.Step) *lines { return newLines(w, "", steps...) }

// report prints one event.
func (p *lines) report(e progress.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	msg := advise(e.Message, e.Cause)
	if e.Step == progress.None {
		fmt.Fprintf(p.w, "%s%s\n", p.prefix, msg)
		return
	}
	n := slices.Index(p.steps, e.Step) + 1
	name := string(e.Step)
	if e.VM != "" {
		name += " " + e.VM
	}
	fmt.Fprintf(p.w, "[%d/%d] %s: %s (%s)\n", n, len(p.steps), name, msg, time.Since(p.start).Round(100*time.Millisecond))
}

// Reporter is the channel the work below reports through.
func (p *lines) Reporter() progress.Reporter { return p.report }

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
	if f.Config.FleetMode() {
		return upFleet(ctx, cmd, f)
	}
	if err := notDeclared(ctx, f, f.Config.VMs); err != nil {
		return err
	}
	return f.Up(ctx, newLines(cmd.ErrOrStderr(), "up: ", fleet.UpSteps...).Reporter())
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
