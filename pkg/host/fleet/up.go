package fleet

import (
	"context"
	"strings"
	"time"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/progress"
)

// UpSteps are the steps Up and vm add report.
var UpSteps = []progress.Step{progress.ControlPlane, progress.Workload, progress.Machine, progress.App, progress.Agent, progress.Onboard, progress.Healthy}

// Up converges the site and every VM of the config: p is told the UpSteps,
// then how it went.
func (f *Fleet) Up(ctx context.Context, p Reporter) error {
	cfg, s := f.Config, f.Site
	begun := time.Now()
	r, err := start(ctx, p, f)
	if err != nil {
		return err
	}
	if err := eachVM(cfg.Parallel, cfg.VMs, func(vm config.VM) error { return r.up(ctx, vm.Name) }); err != nil {
		return err
	}
	took := time.Since(begun).Round(time.Second)
	if own := ownApps(cfg); len(own) > 0 {
		p.Say("%d VM(s) onboarded in %s; %s run their own app (app: false): Healthy follows it on port %d.",
			len(cfg.VMs), took, strings.Join(own, ", "), cfg.Workload.Probe.Port)
	} else {
		p.Say("%d VM(s) onboarded and Healthy in %s.", len(cfg.VMs), took)
	}
	if why := s.TrafficUncheckable(); why != "" {
		p.Say("traffic between workloads is not exercised: %s.", why)
	}
	return nil
}

// up converges one VM through the core: machine, app, agent, onboarding.
func (r *session) up(ctx context.Context, name string) error {
	vm, err := r.cfg.VM(name)
	if err != nil {
		return err
	}
	_, err = r.converge(ctx, r.provisionSpec(vm), drive{tellAgent: true})
	return err
}
