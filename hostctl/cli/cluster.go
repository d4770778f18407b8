package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/pkg/lab/procs"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
)

// clusterCommands are `hostctl cluster ...` and `hostctl istio ...`: the
// first steps of up, one at a time.
func clusterCommands(g *globals) (*cobra.Command, *cobra.Command) {
	cluster := &cobra.Command{Use: "cluster", Short: "Provision, inspect and remove the Kubernetes cluster"}
	istio := &cobra.Command{Use: "istio", Short: "Install and inspect Istio"}
	c := &clusterCmd{vmCmd: vmCmd{g: g}}
	cluster.AddCommand(
		c.flags(&cobra.Command{Use: "up", Short: "Bring the cluster up (up does this first)", Args: cobra.NoArgs, RunE: c.up}, 60*time.Minute),
		c.flags(&cobra.Command{Use: "down", Short: "Remove the cluster and istiod, keeping the VMs", Args: cobra.NoArgs, RunE: c.down}, time.Minute),
		c.output(c.flags(&cobra.Command{Use: "status", Short: "Show the control plane's components", Args: cobra.NoArgs, RunE: c.status}, 30*time.Second)),
		c.flags(&cobra.Command{Use: "kubeconfig", Short: "Print the admin kubeconfig", Args: cobra.NoArgs, RunE: c.kubeconfig}, 0),
	)
	istio.AddCommand(
		c.flags(&cobra.Command{Use: "install", Short: "Install Istio from the embedded charts (up does this second)", Args: cobra.NoArgs, RunE: c.install}, 10*time.Minute),
		c.output(c.flags(&cobra.Command{Use: "status", Short: "Show istiod and which rendered objects are in the cluster", Args: cobra.NoArgs, RunE: c.istioStatus}, 30*time.Second)),
	)
	return cluster, istio
}

type clusterCmd struct {
	vmCmd
	format string
}

func (c *clusterCmd) output(cmd *cobra.Command) *cobra.Command {
	return outputFlag(cmd, &c.format, "table", "json", "yaml")
}

func (c *clusterCmd) up(cmd *cobra.Command, _ []string) error {
	_, _, s, err := c.open(cmd)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	defer cancel()
	p := newProgress(cmd.ErrOrStderr(), "control plane")
	if err := s.upCluster(ctx, p); err != nil {
		return err
	}
	p.step("control plane", "", "up; kubeconfig %s", s.kubeconfig())
	return nil
}

func (c *clusterCmd) install(cmd *cobra.Command, _ []string) error {
	_, _, s, err := c.open(cmd)
	if err != nil {
		return err
	}
	if _, err := os.Stat(s.kubeconfig()); err != nil {
		return fmt.Errorf("no cluster kubeconfig at %s: run hostctl cluster up first", s.kubeconfig())
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	defer cancel()
	p := newProgress(cmd.ErrOrStderr(), "control plane")
	// The cluster is converged too (seconds when it runs): istiod needs it.
	if err := s.upCluster(ctx, p); err != nil {
		return err
	}
	return s.installIstio(ctx, p)
}

func (c *clusterCmd) down(cmd *cobra.Command, _ []string) error {
	_, _, s, err := c.open(cmd)
	if err != nil {
		return err
	}
	return s.downCluster(cmd.Context(), newProgress(cmd.ErrOrStderr(), "cluster"), false)
}

func (c *clusterCmd) kubeconfig(cmd *cobra.Command, _ []string) error {
	_, _, s, err := c.open(cmd)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(s.kubeconfig())
	if err != nil {
		return fmt.Errorf("no cluster kubeconfig (%w): run hostctl cluster up", err)
	}
	_, err = cmd.OutOrStdout().Write(data)
	return err
}

// component is one line of a status report.
type component struct {
	Name   string `json:"name"`
	State  string `json:"state"`
	Detail string `json:"detail,omitempty"`
}

// processes are the lab cluster's control-plane processes.
func (s *labSite) processes() []component {
	var out []component
	dir := s.state.Path("lab", "cluster")
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
		if pid, ok := procs.Dir(dir).Running(name); ok {
			out = append(out, component{name, "running", fmt.Sprintf("pid %d", pid)})
		} else {
			out = append(out, component{name, "stopped", "run hostctl cluster up"})
		}
	}
	return out
}

// processes: a cluster of yours (or k3s) runs its own.
func (s *clusterSite) processes() []component { return nil }

func (c *clusterCmd) status(cmd *cobra.Command, _ []string) error {
	_, _, s, err := c.open(cmd)
	if err != nil {
		return err
	}
	out := s.processes()
	api := component{"API", "unreachable", "run hostctl cluster up"}
	if clients, err := kubeClients(s.kubeconfig()); err == nil {
		if v, err := clients.Kube.Discovery().ServerVersion(); err == nil {
			api = component{"API", "answering", fmt.Sprintf("Kubernetes %s; kubeconfig %s", v.GitVersion, s.kubeconfig())}
		}
	}
	return reportComponents(cmd.OutOrStdout(), c.format, append(out, api), "running", "answering")
}

func (c *clusterCmd) istioStatus(cmd *cobra.Command, _ []string) error {
	_, _, s, err := c.open(cmd)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	defer cancel()
	var out []component
	if detail, err := s.istiodReady(ctx, s.revision(ctx)); err != nil {
		out = append(out, component{"istiod", "not ready", fmt.Sprintf("%v: run hostctl istio install", err)})
	} else {
		out = append(out, component{"istiod", "ready", detail})
	}
	ew := component{Name: "east-west gateway"}
	if yours := s.joinedIstio(ctx); yours != "" {
		ew.State, ew.Detail = s.eastWest(ctx)
		out = append(out, component{"install", "yours", yours + ": the VMs join it; meshvm installs and changes none of it"}, ew)
		return reportComponents(cmd.OutOrStdout(), c.format, out, "ready", "yours", "not run")
	}
	objs, keep, err := s.istio()
	if err != nil {
		return err
	}
	rc, err := restConfig(s.kubeconfig())
	if err != nil {
		return err
	}
	changes, err := istioinstall.Check(ctx, rc, objs, keep)
	if err != nil {
		return fmt.Errorf("%w: is the cluster up? (hostctl cluster status)", err)
	}
	st := "installed"
	for _, ch := range changes {
		if ch.Action == "missing" {
			st = "incomplete: run hostctl istio install"
		}
	}
	ew.State, ew.Detail = s.eastWest(ctx)
	out = append(out, component{"install", st, fmt.Sprintf("%d objects rendered: %s", len(objs), istioinstall.Summary(changes))}, ew)
	return reportComponents(cmd.OutOrStdout(), c.format, out, "ready", "installed", "not run")
}

// reportComponents prints the components and fails, naming them, when any is in a
// state other than the good ones.
func reportComponents(w io.Writer, format string, out []component, good ...string) error {
	if err := printComponents(w, format, out); err != nil {
		return err
	}
	var bad []string
	for _, c := range out {
		if !slices.Contains(good, c.State) {
			bad = append(bad, fmt.Sprintf("%s %s: %s", c.Name, c.State, c.Detail))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("not healthy:\n%s", strings.Join(bad, "\n"))
	}
	return nil
}

func printComponents(w io.Writer, format string, out []component) error {
	return render(w, format, out, []string{"COMPONENT", "STATE", "DETAIL"},
		func(c component) []string { return []string{c.Name, c.State, c.Detail} })
}
