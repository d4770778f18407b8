package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/pkg/host/agentclient"
	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
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

// open loads the config and its site without starting anything.
func (c *vmCmd) open(cmd *cobra.Command) (config.Config, *statedir.Dir, site, error) {
	return c.g.open(cmd)
}

// vmRun is what a per-VM command starts from: the config, its state and
// site, the VMs named (each must be listed) and a context bounded by
// --timeout.
type vmRun struct {
	cfg   config.Config
	state *statedir.Dir
	site  site
	vms   []config.VM
	ctx   context.Context

	clients    workload.Clients
	clientsErr error
	dialed     bool
}

// begin opens the site for the named VMs; call the CancelFunc when done.
func (c *vmCmd) begin(cmd *cobra.Command, names []string) (*vmRun, context.CancelFunc, error) {
	cfg, state, s, err := c.open(cmd)
	if err != nil {
		return nil, nil, err
	}
	vms, err := pick(cfg, names)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	return &vmRun{cfg: cfg, state: state, site: s, vms: vms, ctx: ctx}, cancel, nil
}

// beginAll is begin for the commands that take every VM when none is named.
func (c *vmCmd) beginAll(cmd *cobra.Command, names []string) (*vmRun, context.CancelFunc, error) {
	if len(names) == 0 {
		cfg, err := c.g.load(cmd)
		if err != nil {
			return nil, nil, err
		}
		for _, vm := range cfg.VMs {
			names = append(names, vm.Name)
		}
	}
	return c.begin(cmd, names)
}

// kube returns the cluster's clients, made once.
func (r *vmRun) kube() (workload.Clients, error) {
	if !r.dialed {
		r.clients, r.clientsErr = kubeClients(r.site.kubeconfig())
		r.dialed = true
	}
	return r.clients, r.clientsErr
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
	r, cancel, err := c.begin(cmd, args)
	if err != nil {
		return err
	}
	defer cancel()
	clients, err := r.kube()
	if err != nil {
		return err
	}
	cfg := r.cfg
	var errs []error
	for _, vm := range r.vms {
		how, err := workload.Revoke(r.ctx, clients.Kube, cfg.Workload.Namespace, vm.Name)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", vm.Name, err))
		case how == "absent":
			fmt.Fprintf(cmd.ErrOrStderr(), "vm revoke %s: no Secret %s/%s: already revoked, or never onboarded\n", vm.Name, cfg.Workload.Namespace, workload.CredentialName(vm.Name))
		default:
			fmt.Fprintf(cmd.ErrOrStderr(), "vm revoke %s: Secret %s/%s deleted: its token is refused from now on; the VM leaves the mesh when its certificate expires (hostctl vm onboard %s issues a new token)\n",
				vm.Name, cfg.Workload.Namespace, workload.CredentialName(vm.Name), vm.Name)
		}
	}
	return errors.Join(errs...)
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
	cmd.Flags().BoolVar(&c.restart, "restart", false, "restart the sidecar even when nothing it reads at start changed (it drains for Istio's terminationDrainDuration, 5s by default)")
	return cmd
}

func (c *vmOnboardCmd) run(cmd *cobra.Command, args []string) error {
	v, cancel, err := c.begin(cmd, args)
	if err != nil {
		return err
	}
	defer cancel()
	ctx := v.ctx
	p := newProgress(cmd.ErrOrStderr(), "control plane", "workload", "agent", "onboard", "healthy")
	r, err := attach(ctx, p, v.cfg, v.state, v.site)
	if err != nil {
		return err
	}
	return eachVM(v.vms, func(vm config.VM) error {
		m, ac, err := r.running(ctx, vm.Name)
		if err != nil {
			return err
		}
		defer ac.Close()
		p.step("agent", vm.Name, "answering on %s:%s", m.Address(), onboard.AgentPort)
		return r.onboard(ctx, vm.Name, m, ac, true, c.restart)
	})
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
	cfg, state, s, err := c.open(cmd)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	defer cancel()
	r, err := start(ctx, newProgress(cmd.ErrOrStderr(), upSteps...), cfg, state, s)
	if err != nil {
		return err
	}
	if err := r.up(ctx, vm.Name); err != nil {
		return fmt.Errorf("%s: %w", vm.Name, err)
	}
	return nil
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
	cfg, state, s, err := c.open(cmd)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	defer cancel()
	rm := &vmRemoval{vmRun: &vmRun{cfg: cfg, state: state, site: s, ctx: ctx}, name: args[0], w: cmd.ErrOrStderr(), configPath: c.g.configPath}
	var errs []error
	m, err := s.machines().Info(ctx, rm.name)
	switch {
	case errors.Is(err, machine.ErrNotFound):
		fmt.Fprintf(rm.w, "vm rm: no machine %s\n", rm.name)
	case err != nil:
		return err
	default:
		if err := rm.machine(); err != nil {
			return err
		}
		errs = append(errs, rm.entry(m))
	}
	// The token goes with the VM even when the machine is already gone.
	errs = append(errs, rm.token(), os.RemoveAll(state.Path("vms", rm.name)), rm.unlist())
	return errors.Join(errs...)
}

// vmRemoval is vm rm of one VM, step by step: the machine, its
// WorkloadEntry, its token, its files, its line in the config.
type vmRemoval struct {
	*vmRun
	name       string
	w          io.Writer
	configPath string
}

func (rm *vmRemoval) machine() error {
	how, err := removeVM(rm.ctx, rm.cfg, rm.state, rm.site, rm.name)
	if err != nil {
		return err
	}
	fmt.Fprintf(rm.w, "vm rm: machine %s %s\n", rm.name, how)
	return nil
}

// entry deletes the VM's WorkloadEntry: istiod would drop it after its
// grace period; do not leave it to chance.
func (rm *vmRemoval) entry(m machine.Machine) error {
	clients, err := rm.kube()
	if err != nil {
		return err
	}
	addr := entryAddress(rm.state, m)
	if addr == "" {
		fmt.Fprintf(rm.w, "vm rm: %s has no address and was never onboarded: no WorkloadEntry to delete\n", rm.name)
		return nil
	}
	gone, err := workload.DeleteEntry(rm.ctx, clients, workloadSpec(rm.cfg), addr)
	if err != nil {
		return fmt.Errorf("%w (is the cluster up? hostctl up starts it)", err)
	}
	if gone != "" {
		fmt.Fprintf(rm.w, "vm rm: WorkloadEntry %s deleted\n", gone)
	}
	return nil
}

// token revokes the VM's token. Without a cluster it says so and goes on,
// as before: the machine and its files go anyway.
func (rm *vmRemoval) token() error {
	clients, err := rm.kube()
	if err != nil {
		fmt.Fprintf(rm.w, "vm rm: token of %s not revoked (%v): run hostctl vm rm %s again once the cluster answers\n", rm.name, err, rm.name)
		return nil
	}
	ns := rm.cfg.Workload.Namespace
	how, err := workload.Revoke(rm.ctx, clients.Kube, ns, rm.name)
	if err != nil {
		return err
	}
	if how == "deleted" {
		fmt.Fprintf(rm.w, "vm rm: token revoked (Secret %s/%s deleted)\n", ns, workload.CredentialName(rm.name))
	}
	return nil
}

// unlist takes the VM off the config file, unless it is the last one.
func (rm *vmRemoval) unlist() error {
	removed, err := config.RemoveVM(rm.configPath, rm.name)
	switch {
	case err != nil:
		return err
	case removed:
		fmt.Fprintf(rm.w, "vm rm: %s taken off %s\n", rm.name, rm.configPath)
	case len(rm.cfg.VMs) == 1 && rm.cfg.VMs[0].Name == rm.name:
		fmt.Fprintf(rm.w, "vm rm: %s stays listed in %s (a config needs one VM): the next up creates it again\n", rm.name, rm.configPath)
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
	r, cancel, err := c.begin(cmd, args)
	if err != nil {
		return err
	}
	defer cancel()
	stopper, ok := r.site.machines().(machine.Stopper)
	if !ok {
		return fmt.Errorf("%s machines are not hostctl's to power off: stop them yourself (the agent and sidecar come back on boot)", r.cfg.MachineProvider())
	}
	return eachVM(r.vms, func(vm config.VM) error {
		if err := stopper.Stop(r.ctx, vm.Name); err != nil {
			return err
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "vm stop: %s stopped\n", vm.Name)
		return nil
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
	r, cancel, err := c.begin(cmd, args)
	if err != nil {
		return err
	}
	defer cancel()
	clients, err := r.kube()
	if err != nil {
		return err
	}
	cfg, state, lab, ctx := r.cfg, r.state, r.site.machines(), r.ctx
	p := newProgress(cmd.ErrOrStderr(), "machine", "agent", "healthy")
	return eachVM(r.vms, func(vm config.VM) error {
		m, err := lab.Info(ctx, vm.Name)
		if err != nil {
			return fmt.Errorf("%w: run hostctl up (or hostctl vm add %s) to create it", err, vm.Name)
		}
		var prev workload.Entry
		if !m.Running() {
			// Booting: the entry must come from the new boot's proxy.
			if prev, _, err = workload.FindEntry(ctx, clients, workloadSpec(cfg), entryAddress(state, m)); err != nil {
				return err
			}
		}
		m, err = lab.Launch(ctx, machine.Spec{Name: vm.Name})
		if err != nil {
			return err
		}
		p.step("machine", vm.Name, "%s at %s", m.State.Lower(), m.Address())
		ac, err := onboard.Connect(ctx, state, m)
		if err != nil {
			return err
		}
		ac.Close()
		p.step("agent", vm.Name, "answering")
		_, detail, err := waitOnboarded(ctx, cfg, clients, vm, m.Address(), c.timeout, prev)
		if err != nil {
			return fmt.Errorf("%w; then run hostctl vm onboard %s", err, vm.Name)
		}
		p.step("healthy", vm.Name, "%s", detail)
		return nil
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
	cfg, state, s, err := c.open(cmd)
	if err != nil {
		return err
	}
	if _, err := pick(cfg, args); err != nil {
		return err
	}
	ctx := cmd.Context()
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	return printLogs(ctx, cmd.OutOrStdout(), state, s.machines(), args[0], &agentv1.SidecarLogsRequest{Source: src, TailLines: c.tail, Follow: c.follow})
}

// printLogs prints the sidecar's log lines from VM name's agent to out.
func printLogs(ctx context.Context, out io.Writer, state *statedir.Dir, machines machine.Provider, name string, req *agentv1.SidecarLogsRequest) error {
	m, err := machines.Info(ctx, name)
	if err != nil {
		return fmt.Errorf("%w: run hostctl up to create it", err)
	}
	if !m.Running() {
		return fmt.Errorf("VM %s is %s: run hostctl vm start %s", m.Name, m.State.Lower(), m.Name)
	}
	ac, err := onboard.Dial(state, m.Address())
	if err != nil {
		return err
	}
	defer ac.Close()
	err = ac.SidecarLogs(ctx, req, func(lines []*agentv1.LogLine) error {
		for _, l := range lines {
			if _, err := fmt.Fprintln(out, l.GetText()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w", m.Name, err)
	}
	return nil
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
	r, cancel, err := c.beginAll(cmd, args)
	if err != nil {
		return err
	}
	defer cancel()
	clients, err := r.kube()
	if err != nil {
		return err
	}
	spec, life, w := workloadSpec(r.cfg), r.cfg.Workload.TokenLifetime.Duration, cmd.ErrOrStderr()
	return eachVM(r.vms, func(vm config.VM) error {
		saved := filepath.Join("vms", vm.Name, "files", "istio-token")
		last, _ := r.state.ReadFile(saved)
		if !c.force && workload.Reusable(r.ctx, clients.Kube, last, spec, vm.Name, life) {
			fmt.Fprintf(w, "vm renew %s: token kept (more than half its life left)\n", vm.Name)
			return nil
		}
		m, err := r.site.machines().Info(r.ctx, vm.Name)
		if err != nil {
			return err
		}
		if !m.Running() {
			return fmt.Errorf("VM %s is %s: start it (hostctl vm start %s), then renew", vm.Name, m.State.Lower(), vm.Name)
		}
		tok, err := workload.IssueToken(r.ctx, clients.Kube, spec, vm.Name, life)
		if err != nil {
			return err
		}
		if tok.Capped != "" {
			fmt.Fprintf(w, "vm renew %s: %s\n", vm.Name, tok.Capped)
		}
		ac, err := onboard.Connect(r.ctx, r.state, m)
		if err != nil {
			return err
		}
		defer ac.Close()
		if _, err := ac.PutFile(r.ctx, agentclient.BytesFile(onboard.TokenPath, tok.Raw)); err != nil {
			return err
		}
		if err := r.state.WriteSecret(saved, tok.Raw); err != nil {
			return err
		}
		fmt.Fprintf(w, "vm renew %s: new token valid until %s sent; sidecar not restarted\n", vm.Name, tok.ExpiresAt.UTC().Format(time.RFC3339))
		return nil
	})
}
