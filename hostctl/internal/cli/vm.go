package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/host/fleetmode"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// vmCmd holds what the per-VM commands share.
type vmCmd struct {
	g       *globals
	timeout time.Duration
}

func (c *vmCmd) flags(cmd *cobra.Command, timeout time.Duration) *cobra.Command {
	cmd.Flags().DurationVar(&c.timeout, "timeout", timeout, "give up after this long")
	return cmd
}

// open loads the config and its fleet without starting anything.
func (c *vmCmd) open(cmd *cobra.Command) (*fleet.Fleet, error) {
	return c.g.open(cmd)
}

// vmRun is what a per-VM command starts from: the fleet, the VMs named
// (each must be listed) and a context bounded by --timeout.
type vmRun struct {
	*fleet.Fleet
	vms []config.VM
	ctx context.Context
}

// begin opens the fleet for the named VMs; call the CancelFunc when done.
func (c *vmCmd) begin(cmd *cobra.Command, names []string) (*vmRun, context.CancelFunc, error) {
	f, err := c.open(cmd)
	if err != nil {
		return nil, nil, err
	}
	vms, err := pick(f.Config, names)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	return &vmRun{Fleet: f, vms: vms, ctx: ctx}, cancel, nil
}

// onVMs runs fn on the named VMs within --timeout.
func (c *vmCmd) onVMs(cmd *cobra.Command, names []string, fn func(*vmRun) error) error {
	r, cancel, err := c.begin(cmd, names)
	if err != nil {
		return err
	}
	defer cancel()
	return fn(r)
}

// onAllVMs is onVMs on every VM when none is named.
func (c *vmCmd) onAllVMs(cmd *cobra.Command, names []string, fn func(*vmRun) error) error {
	if len(names) == 0 {
		cfg, err := c.g.load(cmd)
		if err != nil {
			return err
		}
		for _, vm := range cfg.VMs {
			names = append(names, vm.Name)
		}
	}
	return c.onVMs(cmd, names, fn)
}

func vmCommands(g *globals) []*cobra.Command {
	return []*cobra.Command{
		(&vmOnboardCmd{vmCmd: vmCmd{g: g}}).command(),
		(&vmAddCmd{vmCmd: vmCmd{g: g}}).command(),
		(&vmRmCmd{vmCmd{g: g}}).command(),
		(&vmStartCmd{vmCmd{g: g}}).command(),
		(&vmStopCmd{vmCmd{g: g}}).command(),
		(&vmLogsCmd{vmCmd: vmCmd{g: g}}).command(),
		(&vmRevokeCmd{vmCmd{g: g}}).command(),
		(&vmRenewCmd{vmCmd: vmCmd{g: g}}).command(),
		(&vmUpgradeCmd{vmCmd: vmCmd{g: g}}).command(),
	}
}

type vmRevokeCmd struct{ vmCmd }

func (c *vmRevokeCmd) command() *cobra.Command {
	return c.flags(&cobra.Command{
		Use:               "revoke VM...",
		ValidArgsFunction: c.g.completeVMs(0),
		Short:             "Revoke VMs' istio-tokens at once: they leave the mesh when their certificates lapse",
		Long: "revoke deletes the Secret each VM's token is bound to (meshvm-VM in the workload namespace), so the\n" +
			"API server refuses the token from then on and istiod issues the VM no new certificate. The VM keeps its\n" +
			"current certificate until it expires. hostctl vm onboard VM issues a new token bound to a new Secret.",
		Args: cobra.MinimumNArgs(1),
		RunE: c.run,
	}, time.Minute)
}

func (c *vmRevokeCmd) run(cmd *cobra.Command, args []string) error {
	return c.onVMs(cmd, args, func(r *vmRun) error {
		if r.Config.FleetMode() {
			return revokeFleet(r.ctx, r.Fleet, r.vms, sayer(cmd.ErrOrStderr(), "vm revoke "))
		}
		return r.Revoke(r.ctx, r.vms, sayer(cmd.ErrOrStderr(), "vm revoke "))
	})
}

type vmOnboardCmd struct {
	vmCmd
	restart bool
}

func (c *vmOnboardCmd) command() *cobra.Command {
	cmd := c.flags(&cobra.Command{
		Use:               "onboard VM...",
		ValidArgsFunction: c.g.completeVMs(0),
		Short:             "Re-onboard running VMs without reinstalling: fresh token and files, sidecar (re)start, wait for Healthy",
		Long: "onboard sends what differs (a fresh token at least; binaries only when they changed), starts the\n" +
			"sidecar, restarting it when a file it reads at start changed, and waits until the VM's WorkloadEntry\n" +
			"is Healthy. A new token alone does not restart a running sidecar: pilot-agent reads the token file\n" +
			"for every certificate request (--restart restarts it anyway). It neither creates nor reinstalls anything.",
		Args: cobra.MinimumNArgs(1),
		RunE: c.run,
	}, 3*time.Minute)
	cmd.Flags().BoolVar(&c.restart, "restart", false, "restart the sidecar even when nothing it reads at start changed (it drains for Istio's terminationDrainDuration, 5s by default; in fleet mode the controller restarts it)")
	return cmd
}

func (c *vmOnboardCmd) run(cmd *cobra.Command, args []string) error {
	return c.onVMs(cmd, args, func(r *vmRun) error {
		if r.Config.FleetMode() {
			verb := "re-onboarded"
			if c.restart {
				verb = "re-onboarded, sidecar restarted,"
			}
			return requestFleet(r.ctx, cmd.ErrOrStderr(), r.Fleet, names(r.vms), v1alpha1.AnnotationOnboard, verb, c.restart)
		}
		if err := notDeclared(r.ctx, r.Fleet, r.vms); err != nil {
			return err
		}
		return r.Onboard(r.ctx, newProgress(cmd.ErrOrStderr(), fleet.OnboardSteps...).Reporter(), r.vms, c.restart)
	})
}

// names are the VMs' names.
func names(vms []config.VM) []string {
	out := make([]string, len(vms))
	for i, vm := range vms {
		out[i] = vm.Name
	}
	return out
}

// pick returns the named VMs from the config; a name it does not list is a
// usage error.
func pick(cfg config.Config, names []string) ([]config.VM, error) {
	var out []config.VM
	for _, n := range names {
		vm, err := cfg.VM(n)
		if err != nil {
			return nil, usageError{err}
		}
		out = append(out, vm)
	}
	return out, nil
}

type vmAddCmd struct {
	vmCmd
	vm  config.VM
	app bool
}

func (c *vmAddCmd) command() *cobra.Command {
	cmd := c.flags(&cobra.Command{
		Use:   "add VM",
		Short: "List a new VM in the config, then create, install and onboard it like up does",
		Args:  cobra.ExactArgs(1),
		RunE:  c.run,
	}, 10*time.Minute)
	f := cmd.Flags()
	f.StringVar(&c.vm.Image, "image", "", "Multipass image (e.g. 22.04)")
	f.IntVar(&c.vm.CPUs, "cpus", 0, "Multipass CPUs")
	f.StringVar(&c.vm.Memory, "memory", "", "Multipass memory (e.g. 1G)")
	f.StringVar(&c.vm.Disk, "disk", "", "Multipass disk (e.g. 4G)")
	f.StringVar(&c.vm.Address, "address", "", "SSH machines: host or host:port")
	f.StringVar(&c.vm.User, "user", "", "SSH machines: user (root, or one with passwordless sudo)")
	f.StringVar(&c.vm.Key, "key", "", "SSH machines: private key file")
	f.BoolVar(&c.app, "app", true, "run the recipe's app on it (--app=false: it runs its own on the workload port)")
	return cmd
}

func (c *vmAddCmd) run(cmd *cobra.Command, args []string) error {
	cfg, err := c.g.load(cmd)
	if err != nil {
		return err
	}
	vm := c.vm
	vm.Name = args[0]
	if cmd.Flags().Changed("app") {
		vm.App = &c.app
	}
	probe := cfg
	probe.VMs = append(append([]config.VM(nil), cfg.VMs...), vm)
	if _, err := cfg.VM(vm.Name); err != nil {
		if err := probe.Validate(); err != nil {
			return err
		}
	}
	added, err := config.AddVM(c.g.configPath, vm, cfg.VMs)
	if err != nil {
		return err
	}
	if added {
		fmt.Fprintf(cmd.ErrOrStderr(), "vm add: %s listed in %s\n", vm.Name, c.g.configPath)
	}
	f, err := c.open(cmd)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	defer cancel()
	if f.Config.FleetMode() {
		// As up: the new VM provisioned and declared, the others unchanged.
		return upFleet(ctx, cmd, f)
	}
	return f.Add(ctx, newProgress(cmd.ErrOrStderr(), fleet.UpSteps...).Reporter(), vm.Name)
}

type vmRmCmd struct{ vmCmd }

func (c *vmRmCmd) command() *cobra.Command {
	return c.flags(&cobra.Command{
		Use:               "rm VM",
		ValidArgsFunction: c.g.completeVMs(1),
		Short:             "Delete a VM, its WorkloadEntry and its state, and take it off the config",
		Args:              cobra.ExactArgs(1),
		RunE:              c.run,
	}, time.Minute)
}

func (c *vmRmCmd) run(cmd *cobra.Command, args []string) error {
	f, err := c.open(cmd)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	defer cancel()
	name, w := args[0], cmd.ErrOrStderr()
	if f.Config.FleetMode() {
		if err := removeFleet(ctx, f, name, sayer(w, "vm rm: ")); err != nil {
			return err
		}
		return unlist(w, f.Config, c.g.configPath, name)
	}
	return f.Remove(ctx, name, sayer(w, "vm rm: "), func() error { return unlist(w, f.Config, c.g.configPath, name) })
}

// unlist takes the VM off the config file, unless it is the last one.
func unlist(w io.Writer, cfg config.Config, configPath, name string) error {
	removed, err := config.RemoveVM(configPath, name)
	switch {
	case err != nil:
		return err
	case removed:
		fmt.Fprintf(w, "vm rm: %s taken off %s\n", name, configPath)
	case len(cfg.VMs) == 1 && cfg.VMs[0].Name == name:
		fmt.Fprintf(w, "vm rm: %s stays listed in %s (a config needs one VM): the next up creates it again\n", name, configPath)
	}
	return nil
}

type vmStopCmd struct{ vmCmd }

func (c *vmStopCmd) command() *cobra.Command {
	return c.flags(&cobra.Command{
		Use:               "stop VM...",
		ValidArgsFunction: c.g.completeVMs(0),
		Short:             "Power VMs off, keeping their disks (istiod drops their WorkloadEntries after its grace period)",
		Args:              cobra.MinimumNArgs(1),
		RunE:              c.run,
	}, time.Minute)
}

func (c *vmStopCmd) run(cmd *cobra.Command, args []string) error {
	return c.onVMs(cmd, args, func(r *vmRun) error {
		return r.Stop(r.ctx, r.vms, sayer(cmd.ErrOrStderr(), "vm stop: "))
	})
}

type vmStartCmd struct{ vmCmd }

func (c *vmStartCmd) command() *cobra.Command {
	return c.flags(&cobra.Command{
		Use:               "start VM...",
		ValidArgsFunction: c.g.completeVMs(0),
		Short:             "Boot stopped VMs and wait until they are Healthy again on their own",
		Long: "start boots the machine and waits for its agent and its WorkloadEntry: the sidecar comes back by\n" +
			"itself (the agent restores the token; the unit is enabled). Nothing is sent.",
		Args: cobra.MinimumNArgs(1),
		RunE: c.run,
	}, 3*time.Minute)
}

func (c *vmStartCmd) run(cmd *cobra.Command, args []string) error {
	return c.onVMs(cmd, args, func(r *vmRun) error {
		if r.Config.FleetMode() {
			return fleetmode.Start(r.ctx, r.Fleet, newProgress(cmd.ErrOrStderr(), fleet.FleetStartSteps...).Reporter(), r.vms)
		}
		return r.Start(r.ctx, newProgress(cmd.ErrOrStderr(), fleet.StartSteps...).Reporter(), r.vms, c.timeout)
	})
}

type vmLogsCmd struct {
	vmCmd
	source string
	tail   uint32
	follow bool
}

var logSources = map[string]agentv1.LogSource{
	"journal":   agentv1.LogSource_LOG_SOURCE_JOURNAL,
	"proxy":     agentv1.LogSource_LOG_SOURCE_PROXY_LOG,
	"proxy-err": agentv1.LogSource_LOG_SOURCE_PROXY_ERR_LOG,
}

func (c *vmLogsCmd) command() *cobra.Command {
	cmd := c.flags(&cobra.Command{
		Use:               "logs VM",
		ValidArgsFunction: c.g.completeVMs(1),
		Short:             "Print the sidecar's logs from the VM, through its agent",
		Args:              cobra.ExactArgs(1),
		RunE:              c.run,
	}, 0)
	cmd.Flags().StringVar(&c.source, "source", "journal", "journal (the istio unit), proxy (/var/log/istio/istio.log) or proxy-err")
	cmd.Flags().Uint32Var(&c.tail, "tail", 100, "lines from the end to print first")
	cmd.Flags().BoolVarP(&c.follow, "follow", "f", false, "keep printing new lines")
	return cmd
}

func (c *vmLogsCmd) run(cmd *cobra.Command, args []string) error {
	src, ok := logSources[c.source]
	if !ok {
		return usageErrorf("--source %q: want journal, proxy or proxy-err", c.source)
	}
	f, err := c.open(cmd)
	if err != nil {
		return err
	}
	if _, err := pick(f.Config, args); err != nil {
		return err
	}
	ctx := cmd.Context()
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	if f.Config.FleetMode() {
		if err := fleetmode.UseCluster(ctx, f); err != nil {
			return err
		}
	}
	return f.Logs(ctx, cmd.OutOrStdout(), args[0], &agentv1.SidecarLogsRequest{Source: src, TailLines: c.tail, Follow: c.follow})
}

type vmRenewCmd struct {
	vmCmd
	force bool
}

func (c *vmRenewCmd) command() *cobra.Command {
	cmd := c.flags(&cobra.Command{
		Use:               "renew [VM...]",
		ValidArgsFunction: c.g.completeVMs(0),
		Short:             "Replace running VMs' tokens past half their life, nothing else (for a timer)",
		Long: "renew issues a new istio-token bound to the VM's Secret for each running VM whose token is past half\n" +
			"its life (all VMs when none is named; --force: every one) and sends only that file: no other file,\n" +
			"no sidecar restart (pilot-agent reads it for every certificate request), no wait. The agent keeps\n" +
			"its root-only copy in step. Run it from a timer when VMs stay up longer than half workload.tokenLifetime.",
		RunE: c.run,
	}, 2*time.Minute)
	cmd.Flags().BoolVar(&c.force, "force", false, "replace the token even when more than half its life is left")
	return cmd
}

func (c *vmRenewCmd) run(cmd *cobra.Command, args []string) error {
	return c.onAllVMs(cmd, args, func(r *vmRun) error {
		if r.Config.FleetMode() {
			if !c.force {
				w := cmd.ErrOrStderr()
				fmt.Fprintln(w, "vm renew: fleet mode: the controller replaces each token at 40-50% of its life on its own; --force has it replace them now")
				return nil
			}
			return requestFleet(r.ctx, cmd.ErrOrStderr(), r.Fleet, names(r.vms), v1alpha1.AnnotationRenew, "renewed", false)
		}
		if err := notDeclared(r.ctx, r.Fleet, r.vms); err != nil {
			return err
		}
		return r.Renew(r.ctx, r.vms, c.force, sayer(cmd.ErrOrStderr(), "vm renew "))
	})
}
