package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// parsed is a command with the shared flags bound to g and args parsed.
func parsed(t *testing.T, args ...string) (*globals, *cobra.Command) {
	t.Helper()
	g := &globals{}
	cmd := &cobra.Command{}
	g.flags(cmd)
	if err := cmd.ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	return g, cmd
}

func providerIn(t *testing.T, out string) (provider, kubeconfig, namespace string) {
	t.Helper()
	var got struct {
		Cluster  struct{ Provider, Kubeconfig string }
		Workload struct{ Namespace string }
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	return got.Cluster.Provider, got.Cluster.Kubeconfig, got.Workload.Namespace
}

// After up --provider lab (make lab), commands given no site take the lab;
// a flag or MESHVM_PROVIDER still wins; down forgets it.
func TestCommandsTakeTheSiteUpWasGiven(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	t.Setenv("MESHVM_PROVIDER", "")
	t.Setenv("MESHVM_KUBECONFIG", "")
	t.Setenv("MESHVM_STATE_DIR", "")
	out, err := run(t, "config", "show", "-o", "json")
	if p, _, _ := providerIn(t, out); err != nil || p != "multipass" {
		t.Fatalf("before up: %s, %v, want the default multipass", p, err)
	}

	g, cmd := parsed(t, "--provider", "lab")
	if err := g.remember(cmd); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, ".meshvm", siteFile)); err != nil {
		t.Fatalf("up's site not kept in the default state directory: %v", err)
	}
	out, err = run(t, "config", "show", "-o", "json")
	if p, _, _ := providerIn(t, out); err != nil || p != "lab" {
		t.Errorf("after up --provider lab: %s, %v, want lab", p, err)
	}
	out, err = run(t, "--provider", "multipass", "config", "show", "-o", "json")
	if p, _, _ := providerIn(t, out); err != nil || p != "multipass" {
		t.Errorf("--provider multipass: %s, %v, want the flag to win", p, err)
	}
	t.Setenv("MESHVM_PROVIDER", "multipass")
	out, err = run(t, "config", "show", "-o", "json")
	if p, _, _ := providerIn(t, out); err != nil || p != "multipass" {
		t.Errorf("MESHVM_PROVIDER=multipass: %s, %v, want the environment to win", p, err)
	}
	t.Setenv("MESHVM_PROVIDER", "")

	// down of another site keeps the memory; down of this one drops it.
	g, cmd = parsed(t, "--provider", "multipass")
	if err := g.forget(cmd); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, ".meshvm", siteFile)); err != nil {
		t.Errorf("down of another site forgot the lab: %v", err)
	}
	g, cmd = parsed(t)
	if _, err := g.load(cmd); err != nil || g.provider != "lab" {
		t.Fatalf("recall: %q, %v", g.provider, err)
	}
	if err := g.forget(cmd); err != nil {
		t.Fatal(err)
	}
	out, err = run(t, "config", "show", "-o", "json")
	if p, _, _ := providerIn(t, out); err != nil || p != "multipass" {
		t.Errorf("after down: %s, %v, want the default again", p, err)
	}
}

// A config and a kubeconfig given to up are taken by later commands, paths
// made absolute; a remembered config that is gone is named with the fix.
func TestCommandsTakeTheConfigUpWasGiven(t *testing.T) {
	t.Setenv("MESHVM_PROVIDER", "")
	t.Setenv("MESHVM_KUBECONFIG", "")
	t.Setenv("MESHVM_STATE_DIR", "")
	elsewhere := t.TempDir()
	cfgPath := filepath.Join(elsewhere, "site.yaml")
	os.WriteFile(cfgPath, []byte("version: 1\nworkload:\n  namespace: apps\n"), 0o600)
	os.WriteFile(filepath.Join(elsewhere, "admin.kubeconfig"), nil, 0o600)
	work := t.TempDir()
	t.Chdir(work)
	rel, err := filepath.Rel(work, elsewhere)
	if err != nil {
		t.Fatal(err)
	}
	g, cmd := parsed(t, "--config", filepath.Join(rel, "site.yaml"), "--kubeconfig", filepath.Join(rel, "admin.kubeconfig"))
	if err := g.remember(cmd); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "config", "show", "-o", "json")
	p, kc, ns := providerIn(t, out)
	if err != nil || p != "kubeconfig" || kc != filepath.Join(elsewhere, "admin.kubeconfig") || ns != "apps" {
		t.Errorf("got provider %s kubeconfig %s namespace %s (%v), want up's config and kubeconfig", p, kc, ns, err)
	}
	os.Remove(cfgPath)
	_, err = run(t, "config", "show")
	if err == nil || !strings.Contains(err.Error(), "--config "+cfgPath) || !strings.Contains(err.Error(), "which is gone: pass --config") {
		t.Errorf("remembered config gone: got %v, want it named with the fix", err)
	}
}
