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

	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/host/progress"
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
	f, err := c.open(cmd)
	if err != nil {
		return err
	}
	s := f.Site
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	defer cancel()
	p := newProgress(cmd.ErrOrStderr(), progress.ControlPlane).Reporter()
	if err := s.UpCluster(ctx, p); err != nil {
		return err
	}
	p.Step(progress.ControlPlane, "", "up; kubeconfig %s", s.Kubeconfig())
	return nil
}

func (c *clusterCmd) install(cmd *cobra.Command, _ []string) error {
	f, err := c.open(cmd)
	if err != nil {
		return err
	}
	s := f.Site
	if _, err := os.Stat(s.Kubeconfig()); err != nil {
		return fmt.Errorf("no cluster kubeconfig at %s: run hostctl cluster up first", s.Kubeconfig())
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	defer cancel()
	p := newProgress(cmd.ErrOrStderr(), progress.ControlPlane).Reporter()
	// The cluster is converged too (seconds when it runs): istiod needs it.
	if err := s.UpCluster(ctx, p); err != nil {
		return err
	}
	return s.InstallIstio(ctx, p)
}

func (c *clusterCmd) down(cmd *cobra.Command, _ []string) error {
	f, err := c.open(cmd)
	if err != nil {
		return err
	}
	return f.Site.DownCluster(cmd.Context(), newProgress(cmd.ErrOrStderr(), progress.Cluster).Reporter(), false)
}

func (c *clusterCmd) kubeconfig(cmd *cobra.Command, _ []string) error {
	f, err := c.open(cmd)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(f.Site.Kubeconfig())
	if err != nil {
		return fmt.Errorf("no cluster kubeconfig (%w): run hostctl cluster up", err)
	}
	_, err = cmd.OutOrStdout().Write(data)
	return err
}

func (c *clusterCmd) status(cmd *cobra.Command, _ []string) error {
	f, err := c.open(cmd)
	if err != nil {
		return err
	}
	out, good := f.ClusterStatus()
	return reportComponents(cmd.OutOrStdout(), c.format, out, good...)
}

func (c *clusterCmd) istioStatus(cmd *cobra.Command, _ []string) error {
	f, err := c.open(cmd)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	defer cancel()
	out, good, err := f.IstioStatus(ctx)
	if err != nil {
		return err
	}
	return reportComponents(cmd.OutOrStdout(), c.format, out, good...)
}

// reportComponents prints the components and fails, naming them, when any is in a
// state other than the good ones.
func reportComponents(w io.Writer, format string, out []fleet.Component, good ...string) error {
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

func printComponents(w io.Writer, format string, out []fleet.Component) error {
	for i := range out {
		out[i].Detail = advise(out[i].Detail, out[i].Cause)
	}
	return render(w, format, out, []string{"COMPONENT", "STATE", "DETAIL"},
		func(c fleet.Component) []string { return []string{c.Name, c.State, c.Detail} })
}
