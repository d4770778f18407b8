package k3s

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshvm/meshvm/lab/build"
	"github.com/meshvm/meshvm/lab/cluster"
	"github.com/meshvm/meshvm/lab/labtest"
	"github.com/meshvm/meshvm/pkg/machine"
)

func TestRewritePointsAtTheServer(t *testing.T) {
	raw, err := os.ReadFile("testdata/k3s.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out, err := Rewrite(raw, "https://192.168.64.5:6443")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.Load(out)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Clusters["default"].Server; got != "https://192.168.64.5:6443" {
		t.Errorf("server %s, want the server machine's address", got)
	}
	if len(cfg.AuthInfos["default"].ClientKeyData) == 0 || len(cfg.Clusters["default"].CertificateAuthorityData) == 0 || cfg.CurrentContext != "default" {
		t.Errorf("credentials or context lost: %s", out)
	}
	if _, err := Rewrite([]byte("not: [a kubeconfig"), "https://x:6443"); err == nil {
		t.Error("garbage was accepted as a kubeconfig")
	}
}

// The installer runs from the file the download left, with the version,
// the join variables quoted, and is removed afterwards (a stand-in
// installer prints what it was given).
func TestInstallScriptQuotes(t *testing.T) {
	installer := filepath.Join(t.TempDir(), "k3s-install.sh")
	os.WriteFile(installer, []byte(`#!/bin/sh
printf '%s\n' "$INSTALL_K3S_VERSION" "$K3S_TOKEN" "$K3S_URL" "$INSTALL_K3S_FORCE_RESTART" "$@"
`), 0o600)
	script := InstallScript(installer, "v1.33.3+k3s1", "agent --node-label a=b", map[string]string{"K3S_URL": "https://10.0.0.5:6443", "K3S_TOKEN": "K10ab::server:c'd"})
	out, err := exec.Command("sh", "-c", script).CombinedOutput()
	want := "v1.33.3+k3s1\nK10ab::server:c'd\nhttps://10.0.0.5:6443\ntrue\nagent\n--node-label\na=b\n"
	if err != nil || string(out) != want {
		t.Errorf("got %q, %v, want %q", out, err, want)
	}
	if _, err := os.Stat(installer); !os.IsNotExist(err) {
		t.Errorf("installer left behind (%v)", err)
	}
}

// DownloadScript against a stand-in curl (the internet is the boundary):
// a failed download or a page that is not the installer fails the step and
// leaves no file; the installer's path is printed otherwise.
func TestDownloadScript(t *testing.T) {
	for _, tc := range []struct {
		name, curl, wantErr string
	}{
		{name: "installer", curl: `printf '#!/bin/sh\nset -e\n' > "$f"`},
		{name: "no network", curl: `echo "curl: (6) Could not resolve host: get.k3s.io" >&2; exit 6`, wantErr: "Could not resolve host"},
		{name: "captive portal", curl: `echo '<html>log in</html>' > "$f"`, wantErr: "did not serve the k3s installer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin := t.TempDir()
			// curl ... -o FILE URL: the stand-in finds FILE after -o.
			os.WriteFile(filepath.Join(bin, "curl"), []byte("#!/bin/sh\nwhile [ \"$1\" != -o ]; do shift; done; f=$2\n"+tc.curl+"\n"), 0o755)
			cmd := exec.Command("sh", "-c", DownloadScript)
			cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
			out, err := cmd.CombinedOutput()
			left, _ := filepath.Glob("/tmp/k3s-install.*")
			for _, f := range left {
				os.Remove(f)
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(string(out), tc.wantErr) || len(left) != 0 {
					t.Errorf("got %q, %v, files %v, want it to fail with %q and leave nothing", out, err, left, tc.wantErr)
				}
				return
			}
			if err != nil || !installerPath.MatchString(strings.TrimSpace(string(out))) || len(left) != 1 {
				t.Errorf("got %q, %v, files %v, want the installer's path", out, err, left)
			}
		})
	}
}

// A failed download fails that machine's step at once, naming the network,
// and no installer runs; an agent's failure is reported by name.
func TestDownloadFailureNamesTheNetwork(t *testing.T) {
	ctx := context.Background()
	for _, offline := range []string{"k3s-server", "k3s-agent-2"} {
		m := &machines{installed: map[string]string{}, offline: map[string]bool{offline: true}}
		c := Config{Provider: m, Version: "v1.33.3+k3s1", Server: machine.Spec{Name: "k3s-server"},
			Agents: []machine.Spec{{Name: "k3s-agent-1"}, {Name: "k3s-agent-2"}}}
		_, err := Up(ctx, c)
		for _, want := range []string{"k3s on " + offline, "Could not resolve host: get.k3s.io", "get.k3s.io and github.com", "docker.io"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%s offline: got %v, want %q", offline, err, want)
			}
		}
		if _, ok := m.installed[offline]; ok {
			t.Errorf("%s offline: the installer ran", offline)
		}
	}
}

// machines stands in for the machine provider at the boundary k3s needs
// (its installer downloads from the internet): it records every command,
// answers k3s --version once the installer ran, and serves the node token
// and the server's kubeconfig.
type machines struct {
	mu         sync.Mutex
	installed  map[string]string
	offline    map[string]bool // machines whose download of the installer fails
	calls      []string
	kubeconfig []byte
	onInstall  func(name string)
}

func (m *machines) Launch(_ context.Context, s machine.Spec) (machine.Machine, error) {
	return machine.Machine{Name: s.Name, State: "Running", Addresses: []string{"127.0.0.1"}, Arch: "amd64"}, nil
}

func (m *machines) Info(ctx context.Context, name string) (machine.Machine, error) {
	return m.Launch(ctx, machine.Spec{Name: name})
}

func (m *machines) Exec(_ context.Context, name string, _ io.Reader, args ...string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cmd := strings.Join(args, " ")
	m.calls = append(m.calls, name+": "+cmd)
	switch {
	case cmd == "sh -c "+RunningScript("k3s") || cmd == "sh -c "+RunningScript("k3s-agent"):
		if v, ok := m.installed[name]; ok {
			return []byte("k3s version " + v + " (abc123)\ngo version go1.24.4\nactive\n"), nil
		}
		return []byte("sh: 1: k3s: not found"), errors.New("exit status 127")
	case cmd == "sh -c "+DownloadScript:
		if m.offline[name] {
			return []byte("curl: (6) Could not resolve host: get.k3s.io\n"), errors.New("exit status 6")
		}
		return []byte("/tmp/k3s-install.Ab12Cd34\n"), nil
	case strings.HasPrefix(cmd, "sh -c set -e; f=/tmp/k3s-install.Ab12Cd34;"):
		m.installed[name] = strings.Fields(strings.SplitN(cmd, "INSTALL_K3S_VERSION=", 2)[1])[0]
		if m.onInstall != nil {
			go m.onInstall(name)
		}
		return nil, nil
	case strings.Contains(cmd, "uninstall.sh"):
		delete(m.installed, name)
		return nil, nil
	case cmd == "cat "+tokenPath:
		return []byte("K10secret::server:token\n"), nil
	case cmd == "cat "+kubeconfigPath:
		return m.kubeconfig, nil
	}
	return nil, fmt.Errorf("unexpected command %q", cmd)
}

func (m *machines) Transfer(context.Context, string, string, io.Reader, os.FileMode) error {
	return errors.New("k3s transfers nothing")
}
func (m *machines) Delete(context.Context, string) error { return nil }

// TestUpOnMachines converges a server and two agents: the server first,
// with traefik off and the pinned version; the agents joined with its
// address and token; the kubeconfig rewritten; the nodes waited Ready on a
// real API server (the lab's), where the test registers them as their
// kubelets would. A second Up installs nothing.
func TestUpOnMachines(t *testing.T) {
	labtest.RequireBuild(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	bins, err := build.Build(ctx, build.Options{ModuleDir: labtest.ModuleDir, CacheDir: labtest.Cache(), Progress: os.Stderr})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "cluster")
	t.Cleanup(func() { cluster.Down(context.Background(), dir) })
	if err := cluster.Up(ctx, cluster.Config{Dir: dir, APIServer: bins.Path("kube-apiserver"), ControllerManager: bins.Path("kube-controller-manager")}); err != nil {
		t.Fatal(err)
	}
	lab, err := os.ReadFile(cluster.Kubeconfig(dir))
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := clientcmd.BuildConfigFromFlags("", cluster.Kubeconfig(dir))
	kc := kubernetes.NewForConfigOrDie(rc)
	m := &machines{installed: map[string]string{}, kubeconfig: lab}
	beats, stopBeats := context.WithCancel(ctx)
	defer stopBeats()
	m.onInstall = func(name string) { kubelet(beats, t, kc, name) }
	server := cluster.Server(dir)
	port := server[strings.LastIndex(server, ":")+1:]
	c := Config{Provider: m, Version: "v1.33.3+k3s1", APIPort: port, Server: machine.Spec{Name: "k3s-server"},
		Agents: []machine.Spec{{Name: "k3s-agent-1"}, {Name: "k3s-agent-2"}}, Progress: func(f string, a ...any) { t.Logf(f, a...) }}
	out, err := Up(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if cfg, _ := clientcmd.Load(out); cfg == nil || cfg.Clusters["meshvm-lab"].Server != "https://127.0.0.1:"+port {
		t.Errorf("kubeconfig not pointed at the server machine:\n%s", out)
	}
	var serverInstall, firstAgent int = -1, -1
	for i, call := range m.calls {
		switch {
		case strings.HasPrefix(call, "k3s-server: ") && strings.Contains(call, "INSTALL_K3S_VERSION="):
			serverInstall = i
			if !strings.Contains(call, "INSTALL_K3S_VERSION=v1.33.3+k3s1") || !strings.Contains(call, "server --disable traefik --https-listen-port "+port) {
				t.Errorf("server install: %s", call)
			}
		case strings.HasPrefix(call, "k3s-agent-") && strings.Contains(call, "INSTALL_K3S_VERSION="):
			if firstAgent < 0 {
				firstAgent = i
			}
			if !strings.Contains(call, "K3S_URL=https://127.0.0.1:"+port) || !strings.Contains(call, "K3S_TOKEN=K10secret::server:token") || !strings.HasSuffix(call, ` sh "$f" agent`) {
				t.Errorf("agent join: %s", call)
			}
		}
	}
	if serverInstall < 0 || firstAgent < serverInstall {
		t.Errorf("want the server installed before the agents join:\n%s", strings.Join(m.calls, "\n"))
	}

	m.calls = nil
	if _, err := Up(ctx, c); err != nil {
		t.Fatal(err)
	}
	for _, call := range m.calls {
		if strings.Contains(call, "get.k3s.io") || strings.Contains(call, "INSTALL_K3S_VERSION") {
			t.Errorf("second Up reinstalled: %s", call)
		}
	}

	// Uninstall on machines that are not ours: agents first, the right script each.
	m.calls = nil
	if err := Uninstall(ctx, c); err != nil {
		t.Fatal(err)
	}
	if len(m.calls) != 3 || !strings.HasPrefix(m.calls[2], "k3s-server: ") || !strings.Contains(m.calls[2], "/usr/local/bin/k3s-uninstall.sh") ||
		!strings.Contains(m.calls[0], "k3s-agent-uninstall.sh") || len(m.installed) != 0 {
		t.Errorf("uninstall calls:\n%s", strings.Join(m.calls, "\n"))
	}

	// A node that never gets Ready is named when the wait gives up.
	short, cancelShort := context.WithTimeout(ctx, 3*time.Second)
	defer cancelShort()
	err = WaitNodes(short, rc, []string{"k3s-server", "k3s-agent-9"}, t.Logf)
	if err == nil || !strings.Contains(err.Error(), "k3s-agent-9") || strings.Contains(err.Error(), "k3s-server,") {
		t.Errorf("got %v, want the missing node named", err)
	}
}

// kubelet does what the node's kubelet would: register the node, then
// keep its Ready condition and its Lease fresh, so the controller manager's
// node lifecycle controller sees a live node, until ctx ends.
func kubelet(ctx context.Context, t *testing.T, kc kubernetes.Interface, name string) {
	time.Sleep(500 * time.Millisecond)
	if _, err := kc.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil && ctx.Err() == nil {
		t.Errorf("register node %s: %v", name, err)
		return
	}
	holder, seconds := name, int32(40)
	for ctx.Err() == nil {
		now := metav1.Now()
		if n, err := kc.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{}); err == nil {
			n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
				LastHeartbeatTime: now, LastTransitionTime: now}}
			kc.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}) // a conflict is retried next beat
		}
		lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kube-node-lease"},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &seconds, RenewTime: &metav1.MicroTime{Time: now.Time}}}
		if l, err := kc.CoordinationV1().Leases("kube-node-lease").Get(ctx, name, metav1.GetOptions{}); err == nil {
			l.Spec = lease.Spec
			kc.CoordinationV1().Leases("kube-node-lease").Update(ctx, l, metav1.UpdateOptions{})
		} else {
			kc.CoordinationV1().Leases("kube-node-lease").Create(ctx, lease, metav1.CreateOptions{})
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}
