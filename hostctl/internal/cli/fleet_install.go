package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/hostctl/internal/agentbin"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/report"
)

// fleetInstallCommands are `hostctl fleet install|uninstall`: fleet
// mode's controller on a real cluster.
func fleetInstallCommands(g *globals) []*cobra.Command {
	c := &fleetInstallCmd{vmCmd: vmCmd{g: g}}
	install := c.flags(&cobra.Command{Use: "install", Short: "Build the controller's image, load or push it, apply its manifests and wait for it", Args: cobra.NoArgs, RunE: c.install}, 10*time.Minute)
	install.Flags().StringVar(&c.registry, "registry", "", "push the image to this repository (registry/repository) instead of loading it into the k3s nodes hostctl made; needed on a cluster of yours")
	install.Flags().StringVar(&c.controllerDir, "controller-dir", "", "build the image from the meshvm-controller-linux-ARCH binaries of this directory instead of the ones built into hostctl")
	install.Flags().BoolVar(&c.noWait, "no-wait", false, "return once the manifests are applied")
	_ = install.MarkFlagDirname("controller-dir")
	uninstall := c.flags(&cobra.Command{Use: "uninstall", Short: "Remove the controller and what fleet install applied (the MeshVM CRD and the agent CA stay)", Args: cobra.NoArgs, RunE: c.uninstall}, 2*time.Minute)
	uninstall.Flags().BoolVar(&c.force, "force", false, "remove the controller even while MeshVMs remain (they stay, with the CRD)")
	return []*cobra.Command{outputFlag(install, &c.format, "text", "json", "yaml"), outputFlag(uninstall, &c.format, "text", "json", "yaml")}
}

type fleetInstallCmd struct {
	vmCmd
	format, registry, controllerDir string
	noWait, force                   bool
}

func (c *fleetInstallCmd) install(cmd *cobra.Command, _ []string) error {
	f, err := c.open(cmd)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	defer cancel()
	start := time.Now()
	r, err := f.InstallController(ctx, newProgress(cmd.ErrOrStderr(), fleet.ControllerSteps...).Reporter(), fleet.ControllerOptions{
		Registry: c.registry, NoWait: c.noWait, Binary: controllerBinary(c.controllerDir)})
	if err != nil {
		return err
	}
	if ok, err := report.Encode(cmd.OutOrStdout(), c.format, r); ok {
		return err
	}
	state := "available"
	if !r.Available {
		state = "applied (not waited for)"
	}
	_, err = fmt.Fprintf(cmd.OutOrStdout(), "fleet install: controller %s, image %s; %s (%s)\n", state, r.Image, r.Summary, time.Since(start).Round(100*time.Millisecond))
	return err
}

func (c *fleetInstallCmd) uninstall(cmd *cobra.Command, _ []string) error {
	f, err := c.open(cmd)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	defer cancel()
	r, err := f.UninstallController(ctx, c.force)
	if err != nil {
		return err
	}
	if ok, err := report.Encode(cmd.OutOrStdout(), c.format, r); ok {
		return err
	}
	say := sayer(cmd.ErrOrStderr(), "fleet uninstall: ")
	for _, ch := range r.Objects {
		if ch.Why != "" {
			say.Say("%s %s: %s", ch.Ref, ch.Action, ch.Why)
		}
	}
	_, err = fmt.Fprintf(cmd.OutOrStdout(), "fleet uninstall: %s\n", r.Summary)
	return err
}

// controllerBinary finds the static controller for a node architecture:
// in dir (--controller-dir) when given, else built into hostctl (make
// build), else beside hostctl or in the checkout's bin/ (a plain go build,
// in development).
func controllerBinary(dir string) func(arch string) ([]byte, error) {
	b := builtIn{what: "controller", name: agentbin.ControllerName, embedded: agentbin.Controller, flag: "--controller-dir", flagDesc: "--controller-dir"}
	return func(arch string) ([]byte, error) { return b.find(arch, dir, agentDirsOnDisk()) }
}
