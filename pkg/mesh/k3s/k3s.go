// Package k3s provisions the recipe's cluster on machines of any machine
// provider: a k3s server with traefik disabled (k3s's service load balancer,
// klipper, stays: it gives the east-west gateway its address), agents joined
// with the server's node token, the kubeconfig fetched and its server
// address rewritten to the server machine's, and the nodes waited Ready with
// client-go. A machine that already runs the pinned k3s is left alone.
package k3s

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/meshvm/meshvm/pkg/machine"
)

// Where k3s keeps what the cluster's users need.
const (
	kubeconfigPath = "/etc/rancher/k3s/k3s.yaml"
	tokenPath      = "/var/lib/rancher/k3s/server/node-token"
	defaultAPIPort = "6443"
)

// Config is the cluster to converge.
type Config struct {
	Provider machine.Provider
	// Version is the pinned k3s release, e.g. v1.33.3+k3s1.
	Version string
	Server  machine.Spec
	Agents  []machine.Spec
	// APIPort is the server's --https-listen-port; empty means 6443.
	APIPort string
	// Progress reports each step.
	Progress func(format string, args ...any)
}

// Up converges the cluster: machines launched or reused, k3s installed
// where it is missing or another version, and every node Ready. It
// returns the admin kubeconfig, pointed at the server machine.
func Up(ctx context.Context, c Config) ([]byte, error) {
	if c.Progress == nil {
		c.Progress = func(string, ...any) {}
	}
	if c.Version == "" {
		return nil, errors.New("k3s: no version: set cluster.k3sVersion (e.g. v1.33.3+k3s1)")
	}
	srv, err := c.Provider.Launch(ctx, c.Server)
	if err != nil {
		return nil, fmt.Errorf("k3s server %s: %w", c.Server.Name, err)
	}
	if len(srv.Addresses) == 0 {
		return nil, fmt.Errorf("k3s server %s has no address", srv.Name)
	}
	port, serverArgs := c.APIPort, "server --disable traefik"
	if port == "" {
		port = defaultAPIPort
	} else {
		serverArgs += " --https-listen-port " + port
	}
	if err := c.install(ctx, srv.Name, serverArgs, nil); err != nil {
		return nil, err
	}
	token, err := c.Provider.Exec(ctx, srv.Name, nil, "cat", tokenPath)
	if err != nil {
		return nil, fmt.Errorf("k3s server %s: node token: %w", srv.Name, err)
	}
	url := "https://" + srv.Address() + ":" + port
	join := map[string]string{"K3S_URL": url, "K3S_TOKEN": strings.TrimSpace(string(token))}
	var wg sync.WaitGroup
	errs := make([]error, len(c.Agents))
	for i, a := range c.Agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Provider.Launch(ctx, a); err != nil {
				errs[i] = fmt.Errorf("k3s agent %s: %w", a.Name, err)
				return
			}
			errs[i] = c.install(ctx, a.Name, "agent", join)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	raw, err := c.Provider.Exec(ctx, srv.Name, nil, "cat", kubeconfigPath)
	if err != nil {
		return nil, fmt.Errorf("k3s server %s: kubeconfig: %w", srv.Name, err)
	}
	kc, err := Rewrite(raw, url)
	if err != nil {
		return nil, err
	}
	rc, err := clientcmd.RESTConfigFromKubeConfig(kc)
	if err != nil {
		return nil, err
	}
	names := []string{srv.Name}
	for _, a := range c.Agents {
		names = append(names, a.Name)
	}
	return kc, WaitNodes(ctx, rc, names, c.Progress)
}

// Uninstall removes k3s from machines that are not ours to delete, agents
// first, with the uninstall scripts its installer left; a machine without
// k3s is fine.
func Uninstall(ctx context.Context, c Config) error {
	var errs []error
	for _, a := range c.Agents {
		errs = append(errs, c.uninstall(ctx, a.Name, "/usr/local/bin/k3s-agent-uninstall.sh"))
	}
	errs = append(errs, c.uninstall(ctx, c.Server.Name, "/usr/local/bin/k3s-uninstall.sh"))
	return errors.Join(errs...)
}

func (c Config) uninstall(ctx context.Context, name, script string) error {
	out, err := c.Provider.Exec(ctx, name, nil, "sh", "-c", "if [ -x "+script+" ]; then "+script+"; else echo absent; fi")
	if err != nil {
		return fmt.Errorf("k3s on %s: %s: %w: %s", name, script, err, lastLine(out))
	}
	if c.Progress != nil {
		if strings.TrimSpace(string(out)) == "absent" {
			c.Progress("%s: no k3s", name)
		} else {
			c.Progress("%s: k3s uninstalled", name)
		}
	}
	return nil
}

// install runs k3s's installer on the machine unless it already runs the
// pinned version: the installer is downloaded to a file first, so a failed
// download fails here, naming the network, instead of feeding sh nothing
// (in `curl | sh`, sh exits 0 when curl fails).
func (c Config) install(ctx context.Context, name, args string, env map[string]string) error {
	role := strings.Fields(args)[0]
	unit := map[string]string{"server": "k3s", "agent": "k3s-agent"}[role]
	if out, err := c.Provider.Exec(ctx, name, nil, "sh", "-c", RunningScript(unit)); err == nil && strings.Contains(string(out), c.Version) {
		c.Progress("%s: k3s %s already installed", name, c.Version)
		return nil
	}
	c.Progress("%s: downloading the k3s installer", name)
	out, err := c.Provider.Exec(ctx, name, nil, "sh", "-c", DownloadScript)
	installer := strings.TrimSpace(string(out))
	if err != nil || !installerPath.MatchString(installer) {
		return fmt.Errorf("k3s on %s: downloading the installer from %s: %v: %s (the machine needs the internet: get.k3s.io and github.com for k3s, docker.io for its images; check its DNS, proxy and firewall)", name, installerURL, err, lastLine(out))
	}
	c.Progress("%s: installing k3s %s (%s)", name, c.Version, role)
	if out, err := c.Provider.Exec(ctx, name, nil, "sh", "-c", InstallScript(installer, c.Version, args, env)); err != nil {
		hint := "journalctl -u " + unit + " on the machine shows why"
		if role == "agent" {
			hint = "the agent must reach the server at " + env["K3S_URL"] + "; " + hint
		}
		return fmt.Errorf("k3s on %s: %w: %s (%s)", name, err, lastLine(out), hint)
	}
	return nil
}

const installerURL = "https://get.k3s.io"

// DownloadScript downloads k3s's installer to a fresh root-owned file,
// checks that it is a shell script (not a proxy's or captive portal's page)
// and prints its path.
const DownloadScript = `set -e; f=$(mktemp /tmp/k3s-install.XXXXXXXX); ` +
	`curl -sSfL --retry 3 -o "$f" ` + installerURL + ` || { rm -f "$f"; exit 1; }; ` +
	`if [ "$(head -n 1 "$f")" != '#!/bin/sh' ]; then rm -f "$f"; echo "` + installerURL + ` did not serve the k3s installer (a proxy or captive portal?)" >&2; exit 1; fi; ` +
	`echo "$f"`

// installerPath is what DownloadScript prints.
var installerPath = regexp.MustCompile(`^/tmp/k3s-install\.[A-Za-z0-9]+$`)

// RunningScript prints k3s's version when its unit is active: a machine
// whose k3s is installed but not running (an install interrupted while the
// agent was joining) is installed again.
func RunningScript(unit string) string {
	return "k3s --version && systemctl is-active " + unit
}

// InstallScript is the shell command running the downloaded installer for
// version with args (server or agent flags) and env (K3S_URL and K3S_TOKEN
// for an agent), then removing it. INSTALL_K3S_FORCE_RESTART starts the
// unit even when the files are unchanged (a unit left stopped).
func InstallScript(installer, version, args string, env map[string]string) string {
	vars := []string{"INSTALL_K3S_FORCE_RESTART=true", "INSTALL_K3S_VERSION=" + machine.ShellQuote(version)}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		vars = append(vars, k+"="+machine.ShellQuote(env[k]))
	}
	return "set -e; f=" + machine.ShellQuote(installer) + `; trap 'rm -f "$f"' EXIT; ` + strings.Join(vars, " ") + ` sh "$f" ` + args
}

// Rewrite points every cluster of a k3s kubeconfig (which names
// https://127.0.0.1:6443) at server.
func Rewrite(kubeconfig []byte, server string) ([]byte, error) {
	cfg, err := clientcmd.Load(kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("k3s kubeconfig: %w", err)
	}
	if len(cfg.Clusters) == 0 {
		return nil, errors.New("k3s kubeconfig names no cluster")
	}
	for _, cl := range cfg.Clusters {
		cl.Server = server
	}
	return clientcmd.Write(*cfg)
}

// WaitNodes waits until every named node is registered and Ready, through
// a client-go watch, reporting who it waits for when that changes.
func WaitNodes(ctx context.Context, rc *rest.Config, names []string, progress func(string, ...any)) error {
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	ready := map[string]bool{}
	if nodes, err := kc.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err == nil {
		for i := range nodes.Items {
			ready[nodes.Items[i].Name] = nodeReady(&nodes.Items[i])
		}
	}
	waiting := func() []string {
		var out []string
		for _, n := range names {
			if !ready[n] {
				out = append(out, n)
			}
		}
		return out
	}
	if len(waiting()) == 0 {
		progress("nodes Ready: %s", strings.Join(names, ", "))
		return nil
	}
	last := ""
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = fields.Everything().String()
			return kc.CoreV1().Nodes().List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return kc.CoreV1().Nodes().Watch(ctx, o)
		},
	}
	_, err = watchtools.UntilWithSync(ctx, lw, &corev1.Node{}, nil, func(ev watch.Event) (bool, error) {
		if n, ok := ev.Object.(*corev1.Node); ok {
			ready[n.Name] = ev.Type != watch.Deleted && nodeReady(n)
		}
		w := waiting()
		if now := strings.Join(w, ", "); now != last && len(w) > 0 {
			progress("waiting for node(s) %s to be Ready", now)
			last = now
		}
		return len(w) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("nodes not Ready: %s: %w (kubectl describe node shows why)", strings.Join(waiting(), ", "), err)
	}
	progress("nodes Ready: %s", strings.Join(names, ", "))
	return nil
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}
