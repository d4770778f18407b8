package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshvm/meshvm/pkg/istioinstall"
	"github.com/meshvm/meshvm/pkg/labcluster"
	"github.com/meshvm/meshvm/pkg/labstack"
	"github.com/meshvm/meshvm/pkg/meshlab"
	"github.com/meshvm/meshvm/pkg/procs"
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
	cmd.Flags().StringVarP(&c.format, "output", "o", "table", "output format: table|json")
	return cmd
}

func (c *clusterCmd) stack(cmd *cobra.Command, steps ...string) (labstack.Config, *progress, error) {
	cfg, state, _, err := c.lab(cmd)
	if err != nil {
		return labstack.Config{}, nil, err
	}
	src, err := labSource()
	if err != nil {
		return labstack.Config{}, nil, err
	}
	p := newProgress(cmd.ErrOrStderr(), steps...)
	return stackConfig(cfg, src, state, lineWriter{p, steps[0]}), p, nil
}

func (c *clusterCmd) up(cmd *cobra.Command, _ []string) error {
	sc, p, err := c.stack(cmd, "cluster")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	defer cancel()
	st, err := labstack.UpCluster(ctx, sc)
	if err != nil {
		return err
	}
	p.step("cluster", "", "up; kubeconfig %s", st.Kubeconfig)
	return nil
}

func (c *clusterCmd) install(cmd *cobra.Command, _ []string) error {
	sc, _, err := c.stack(cmd, "istio")
	if err != nil {
		return err
	}
	if _, err := os.Stat(labcluster.Kubeconfig(filepath.Join(sc.Dir, "cluster"))); err != nil {
		return fmt.Errorf("no lab cluster: run hostctl cluster up first")
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	defer cancel()
	// The cluster is converged too (seconds when it runs): istiod needs it.
	st, err := labstack.UpCluster(ctx, sc)
	if err != nil {
		return err
	}
	return labstack.InstallIstio(ctx, sc, st)
}

func (c *clusterCmd) down(cmd *cobra.Command, _ []string) error {
	_, state, _, err := c.lab(cmd)
	if err != nil {
		return err
	}
	if err := labstack.DownCluster(cmd.Context(), state.Path("lab")); err != nil {
		return err
	}
	fmt.Fprintln(cmd.ErrOrStderr(), "cluster down: control plane and istiod stopped, their state removed; the VMs are kept (hostctl down removes them too)")
	return nil
}

func (c *clusterCmd) kubeconfig(cmd *cobra.Command, _ []string) error {
	_, state, _, err := c.lab(cmd)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(labcluster.Kubeconfig(state.Path("lab", "cluster")))
	if err != nil {
		return fmt.Errorf("no lab cluster kubeconfig (%w): run hostctl cluster up", err)
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

func (c *clusterCmd) status(cmd *cobra.Command, _ []string) error {
	_, state, _, err := c.lab(cmd)
	if err != nil {
		return err
	}
	dir := state.Path("lab", "cluster")
	var out []component
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
		if pid, ok := procs.Dir(dir).Running(name); ok {
			out = append(out, component{name, "running", fmt.Sprintf("pid %d", pid)})
		} else {
			out = append(out, component{name, "stopped", "run hostctl cluster up"})
		}
	}
	api := component{"API", "unreachable", "run hostctl cluster up"}
	if clients, err := kubeClients(labcluster.Kubeconfig(dir)); err == nil {
		if v, err := clients.Kube.Discovery().ServerVersion(); err == nil {
			api = component{"API", "answering", fmt.Sprintf("Kubernetes %s; kubeconfig %s", v.GitVersion, labcluster.Kubeconfig(dir))}
		}
	}
	return report(cmd.OutOrStdout(), c.format, append(out, api), "running", "answering")
}

func (c *clusterCmd) istioStatus(cmd *cobra.Command, _ []string) error {
	cfg, state, _, err := c.lab(cmd)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	defer cancel()
	var out []component
	if err := meshlab.Ready(ctx); err != nil {
		out = append(out, component{"istiod", "not ready", "run hostctl istio install"})
	} else {
		pid, _ := procs.Dir(state.Path("lab", "istio")).Running("pilot-discovery")
		out = append(out, component{"istiod", "ready", fmt.Sprintf("Istio %s, a local process (pid %d)", istioinstall.EmbeddedVersion, pid)})
	}
	objs, err := istioinstall.Render(istioOptions(cfg))
	if err != nil {
		return err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", labcluster.Kubeconfig(state.Path("lab", "cluster")))
	if err != nil {
		return fmt.Errorf("no lab cluster: run hostctl cluster up")
	}
	changes, err := istioinstall.Check(ctx, rc, objs, istioinstall.LabRunnable)
	if err != nil {
		return fmt.Errorf("%w: is the cluster up? (hostctl cluster status)", err)
	}
	st := "installed"
	for _, ch := range changes {
		if ch.Action == "missing" {
			st = "incomplete: run hostctl istio install"
		}
	}
	out = append(out, component{"install", st, fmt.Sprintf("%d objects rendered: %s", len(objs), istioinstall.Summary(changes))},
		component{"east-west gateway", "not run", "the lab has no kubelet or load balancer: VMs reach istiod on the host's address"})
	return report(cmd.OutOrStdout(), c.format, out, "ready", "installed", "not run")
}

// report prints the components and fails, naming them, when any is in a
// state other than the good ones.
func report(w io.Writer, format string, out []component, good ...string) error {
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
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	if format != "table" {
		return fmt.Errorf("--output %q: want table or json", format)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "COMPONENT\tSTATE\tDETAIL")
	for _, c := range out {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Name, c.State, c.Detail)
	}
	return tw.Flush()
}
