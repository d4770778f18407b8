package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshvm/meshvm/lab/labtest"
	labvm "github.com/meshvm/meshvm/lab/vm"
	"github.com/meshvm/meshvm/pkg/agenterr"
	"github.com/meshvm/meshvm/pkg/host/agentclient"
	"github.com/meshvm/meshvm/pkg/mtls"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// TestAgentInSystemdVM installs the packaged vmagent unit in a Debian VM
// booting systemd as PID 1 (systemd-nspawn in its own network namespace),
// then drives the real agent over mTLS across the veth: Install with real
// useradd and daemon-reload, the istio unit through D-Bus, its journal,
// DNS and network checks, and Uninstall.
func TestAgentInSystemdVM(t *testing.T) {
	labtest.RequireVMs(t)
	if os.Geteuid() != 0 {
		t.Fatal("the lab needs root (network namespaces, systemd-nspawn)")
	}
	for _, tool := range []string{"systemd-nspawn", "nsenter", "debootstrap"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: apt-get install systemd-container debootstrap util-linux", tool)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	rootfs, err := labvm.Rootfs(ctx, log, labtest.Cache())
	if err != nil {
		t.Fatal(err)
	}

	work := t.TempDir()
	vmDir := filepath.Join(work, "vm")
	bin := filepath.Join(work, "vmagent")
	build := exec.Command("go", "build", "-trimpath", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build vmagent: %v\n%s", err, out)
	}

	// What hostctl will install: the binary, the packaged unit, the config
	// and a CA-signed server certificate for the VM's address.
	hostIP, vmIP := net.IPv4(10, 213, 7, 1), net.IPv4(10, 213, 7, 2)
	ca, err := mtls.NewCA("lab test CA", time.Hour)
	must(t, err)
	srvCert, srvKey, err := ca.IssueServer("vm1", []string{"vm1"}, []net.IP{vmIP}, time.Hour)
	must(t, err)
	must(t, os.MkdirAll(vmDir, 0o755))
	must(t, exec.Command("cp", "-a", "--reflink=auto", rootfs+"/.", vmDir).Run())
	unit, err := os.ReadFile("../packaging/vmagent.service")
	must(t, err)
	cfg, err := os.ReadFile("../packaging/vmagent.yaml")
	must(t, err)
	files := map[string]struct {
		data []byte
		mode os.FileMode
	}{
		"usr/local/bin/vmagent":              {mustRead(t, bin), 0o755},
		"etc/systemd/system/vmagent.service": {unit, 0o644},
		"etc/meshvm/vmagent.yaml":            {cfg, 0o644},
		"etc/meshvm/agent/server.pem":        {srvCert, 0o600},
		"etc/meshvm/agent/server-key.pem":    {srvKey, 0o600},
		"etc/meshvm/agent/client-ca.pem":     {ca.CertPEM(), 0o600},
	}
	for p, f := range files {
		full := filepath.Join(vmDir, p)
		must(t, os.MkdirAll(filepath.Dir(full), 0o755))
		must(t, os.WriteFile(full, f.data, f.mode))
	}
	must(t, os.MkdirAll(filepath.Join(vmDir, "etc/systemd/system/multi-user.target.wants"), 0o755))
	must(t, os.Symlink("/etc/systemd/system/vmagent.service", filepath.Join(vmDir, "etc/systemd/system/multi-user.target.wants/vmagent.service")))

	vm, err := labvm.Launch(ctx, log, labvm.Spec{Name: "vmt1", Rootfs: rootfs, Dir: vmDir, HostIP: hostIP, VMIP: vmIP})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := vm.Exec(context.Background(), "journalctl", "--no-pager", "-n", "60")
			t.Logf("VM journal:\n%s", out)
		}
		if err := vm.Remove(context.Background()); err != nil {
			t.Errorf("remove lab VM: %v", err)
		}
	})

	cliCert, cliKey, err := ca.IssueClient("hostctl", time.Hour)
	must(t, err)
	tlsCfg, err := mtls.ClientConfig(cliCert, cliKey, ca.CertPEM(), vmIP.String())
	must(t, err)
	c, err := agentclient.Dial(net.JoinHostPort(vmIP.String(), "7443"), tlsCfg)
	must(t, err)
	defer c.Close()
	v, err := c.Version(ctx)
	if err != nil {
		t.Fatalf("the packaged unit did not bring the agent up (Type=notify): %v", err)
	}
	t.Logf("agent %s on %s/%s", v.GetVersion(), v.GetOs(), v.GetArch())

	hosts := []*agentv1.HostsEntry{{Ip: hostIP.String(), Names: []string{"istiod.istio-system.svc"}}, {Ip: vmIP.String(), Names: []string{"vm1"}}}
	steps, err := c.Install(ctx, &agentv1.InstallRequest{HostsEntries: hosts})
	if err != nil {
		t.Fatalf("install under the hardened unit: %v", err)
	}
	for _, s := range steps {
		if s.GetName() == "unit" && !strings.Contains(s.GetDetail(), "systemd reloaded") {
			t.Errorf("unit step: got %q, want systemd reloaded over D-Bus", s.GetDetail())
		}
	}
	again, err := c.Install(ctx, &agentv1.InstallRequest{HostsEntries: hosts})
	must(t, err)
	for _, s := range again {
		if s.GetOutcome() != agentv1.StepOutcome_STEP_OUTCOME_UNCHANGED {
			t.Errorf("second install step %s: got %v (%s), want unchanged", s.GetName(), s.GetOutcome(), s.GetDetail())
		}
	}
	if out, err := vm.Exec(ctx, "getent", "passwd", "istio-proxy"); err != nil || !strings.Contains(string(out), "/var/lib/istio") {
		t.Errorf("istio-proxy inside the VM: %q, %v", out, err)
	}
	if out, err := vm.Exec(ctx, "getent", "hosts", "istiod.istio-system.svc"); err != nil || !strings.HasPrefix(string(out), hostIP.String()) {
		t.Errorf("istiod through the VM's own resolver: %q, %v", out, err)
	}

	st, err := c.Status(ctx)
	must(t, err)
	if sc := st.GetSidecar(); sc.GetLoadState() != "loaded" || sc.GetUnitFileState() != "enabled" || sc.GetError() != "" {
		t.Errorf("istio.service as systemd sees it: got %+v, want loaded and enabled", sc)
	}

	// No workload files yet: the unit's ExecStartPre refuses, naming the fix,
	// and the failure is in the journal the agent streams.
	_, err = c.Sidecar(ctx, agentv1.SidecarAction_SIDECAR_ACTION_START)
	if err == nil {
		t.Fatal("sidecar started without workload files")
	}
	if !strings.Contains(err.Error(), "hostctl vm logs") {
		t.Errorf("got %v, want a start failure pointing at hostctl vm logs", err)
	}
	var journal strings.Builder
	must(t, c.SidecarLogs(ctx, &agentv1.SidecarLogsRequest{Source: agentv1.LogSource_LOG_SOURCE_JOURNAL, TailLines: 50}, func(lines []*agentv1.LogLine) error {
		for _, l := range lines {
			journal.WriteString(l.GetText() + "\n")
		}
		return nil
	}))
	if !strings.Contains(journal.String(), "cluster.env has no root-only copy at /var/lib/meshvm/secrets/cluster.env: run hostctl vm onboard") {
		t.Errorf("journal of istio.service lacks prepare's error:\n%s", journal.String())
	}

	r, err := c.ResolveDNS(ctx, &agentv1.ResolveDNSRequest{Name: "vm1", Via: agentv1.DNSVia_DNS_VIA_SYSTEM})
	must(t, err)
	if len(r.GetAddresses()) == 0 || r.GetAddresses()[0] != vmIP.String() || r.GetServer() != "/etc/hosts" {
		t.Errorf("resolve vm1: got %+v, want %s from /etc/hosts", r, vmIP)
	}
	nw, err := c.CheckNetwork(ctx)
	must(t, err)
	if nw.GetSidecarAddress() != vmIP.String() {
		t.Errorf("sidecar address: got %q (%s), want %s", nw.GetSidecarAddress(), nw.GetSidecarAddressSource(), vmIP)
	}

	// The doctor shows a person on the VM the same view, and fails on what is off.
	// No token was delivered: the report says so and, in any format, the
	// exit status too (the error follows the report on stderr).
	out, err := vm.Exec(ctx, "/usr/local/bin/vmagent", "doctor", "-o", "json")
	if err == nil {
		t.Errorf("doctor -o json exited 0 although a check fails")
	}
	var doc struct {
		Checks []struct {
			Check string `json:"check"`
			OK    bool   `json:"ok"`
		} `json:"checks"`
	}
	must(t, json.NewDecoder(bytes.NewReader(out)).Decode(&doc))
	seen := map[string]bool{}
	for _, ck := range doc.Checks {
		seen[ck.Check] = ck.OK
	}
	if !seen["install: user"] || !seen["dns vm1"] || !seen["iptables backend"] {
		t.Errorf("doctor checks: got %+v, want install, DNS and iptables checks passing", doc.Checks)
	}
	if ok, present := seen["istio-token"]; !present || ok {
		t.Errorf("doctor: got istio-token ok=%v present=%v, want a failing token check (none delivered)", ok, present)
	}
	if _, err := vm.Exec(ctx, "/usr/local/bin/vmagent", "doctor"); err == nil {
		t.Errorf("doctor exited 0 although the sidecar is down")
	}

	// A reboot wipes /run: the token must come back from its persisted copy
	// when the enabled unit starts at boot, with no action from hostctl.
	claims := base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"system:serviceaccount:vmns:vmsa","aud":["istio-ca"],"exp":4102444800}`))
	tok := []byte("eyJhbGciOiJSUzI1NiJ9." + claims + ".c2ln")
	for _, f := range []agentclient.File{
		agentclient.BytesFile("/var/run/secrets/tokens/istio-token", tok),
		// No pilot-agent here: skip the capture rules so prepare gets to the end.
		agentclient.BytesFile("/var/lib/istio/envoy/cluster.env", []byte("ISTIO_CUSTOM_IP_TABLES='true'\nISTIO_SVC_IP='"+vmIP.String()+"'\n")),
	} {
		if _, err := c.PutFile(ctx, f); err != nil {
			t.Fatalf("deliver %s: %v", f.Path, err)
		}
	}
	must(t, vm.Stop(ctx))
	vm, err = labvm.Launch(ctx, log, labvm.Spec{Name: "vmt1", Rootfs: rootfs, Dir: vmDir, HostIP: hostIP, VMIP: vmIP})
	if err != nil {
		t.Fatalf("reboot: %v", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := vm.Exec(ctx, "stat", "-c", "%a %U", "/run/secrets/tokens/istio-token")
		if err == nil {
			if got := strings.TrimSpace(string(out)); got != "600 istio-proxy" {
				t.Errorf("restored token: got %q, want 600 istio-proxy", got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the token was not restored after the reboot: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	for {
		st, err = c.Status(ctx)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	must(t, err)
	if st.GetToken().GetPath() != "/var/run/secrets/tokens/istio-token" || st.GetToken().GetSubject() != "system:serviceaccount:vmns:vmsa" {
		t.Errorf("status token after reboot: got %+v (errors %v), want the runtime token of vmns/vmsa", st.GetToken(), st.GetLastErrors())
	}

	un, err := c.Uninstall(ctx, false)
	if err != nil {
		t.Fatalf("uninstall: %v (%v)", err, un)
	}
	if out, err := vm.Exec(ctx, "getent", "passwd", "istio-proxy"); err == nil {
		t.Errorf("istio-proxy still exists after uninstall: %q", out)
	}
	if _, err := os.Stat(filepath.Join(vmDir, "etc/systemd/system/istio.service")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("istio.service left behind: %v", err)
	}
	// The agent is still healthy after all that and refuses strangers.
	other, err := mtls.NewCA("stranger", time.Hour)
	must(t, err)
	oc, ok, err := other.IssueClient("x", time.Hour)
	must(t, err)
	strangerCfg, err := mtls.ClientConfig(oc, ok, ca.CertPEM(), vmIP.String())
	must(t, err)
	sc, err := agentclient.Dial(net.JoinHostPort(vmIP.String(), "7443"), strangerCfg)
	must(t, err)
	defer sc.Close()
	if _, err := sc.Version(ctx); err == nil || errors.Is(err, agenterr.InvalidArgument) {
		t.Errorf("a caller from another CA got %v, want the handshake refused", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	must(t, err)
	return b
}
