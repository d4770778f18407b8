package sidecarenv

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/meshvm/meshvm/pkg/fsroot"
	"github.com/meshvm/meshvm/vmagent/internal/agentstate"
	"github.com/meshvm/meshvm/vmagent/internal/hostsfile"
	"github.com/meshvm/meshvm/vmagent/internal/postinst"
	"github.com/meshvm/meshvm/vmagent/internal/sysusers"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// The proxy user can rewrite /var/lib/istio/envoy/cluster.env and systemd
// loads the sidecar's environment into the root hooks: neither may choose
// the PATH or a preload of the root istio-iptables run. pilot-agent here is
// a script recording the environment it really got.
func TestRootChildGetsNoPlantedEnvironment(t *testing.T) {
	dir := sandbox(t, "ISTIO_SVC_IP='10.9.0.2'\nISTIO_INBOUND_PORTS='8000'\nISTIO_META_DNS_CAPTURE='true'\n")
	planted := "PATH='/tmp/evil'\nLD_PRELOAD='/tmp/evil.so'\nISTIO_SVC_IP='10.9.0.2'\nISTIO_INBOUND_PORTS='*'\n"
	os.WriteFile(filepath.Join(dir, "var/lib/istio/envoy/cluster.env"), []byte(planted), 0o644)
	record := filepath.Join(dir, "child.env")
	os.WriteFile(filepath.Join(dir, "usr/local/bin/pilot-agent"), []byte("#!/bin/sh\nenv > '"+record+"'\n"), 0o755)
	// What systemd's EnvironmentFile= put into the hook's own environment.
	t.Setenv("LD_PRELOAD", "/nonexistent/evil.so")
	t.Setenv("PATH", "/tmp/evil:"+os.Getenv("PATH"))

	root, _ := fsroot.New(dir)
	p := &Preparer{Log: quietLog(), Root: root, Users: sysusers.New(root)}
	if err := p.Prepare(context.Background()); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(record)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSpace(string(data)), "\n")
	slices.Sort(got)
	// sh adds PWD (and may add SHLVL, _): the rest is exactly what we gave.
	got = slices.DeleteFunc(got, func(l string) bool {
		return strings.HasPrefix(l, "PWD=") || strings.HasPrefix(l, "SHLVL=") || strings.HasPrefix(l, "_=")
	})
	want := []string{"ISTIO_INBOUND_PORTS=8000", "ISTIO_META_DNS_CAPTURE=true", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"PROXY_GID=1338", "PROXY_UID=1337"}
	if !slices.Equal(got, want) {
		t.Errorf("root child's environment:\ngot  %q\nwant %q", got, want)
	}
	envData, err := os.ReadFile(filepath.Join(dir, postinst.SidecarEnvPath))
	if err != nil {
		t.Fatal(err)
	}
	if s := string(envData); strings.Contains(s, "PATH=") || strings.Contains(s, "LD_PRELOAD") || !strings.Contains(s, "ISTIO_INBOUND_PORTS='8000'") {
		t.Errorf("sidecar environment is not the root-only copy's:\n%s", s)
	}
}

func TestRootCopyMayNotSetLoaderVariables(t *testing.T) {
	for _, name := range []string{"PATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "GCONV_PATH", "BASH_ENV"} {
		t.Run(name, func(t *testing.T) {
			dir := sandbox(t, "ISTIO_SVC_IP='10.9.0.2'\n"+name+"='/tmp/evil'\n")
			root, _ := fsroot.New(dir)
			ran := false
			p := &Preparer{Log: quietLog(), Root: root, Users: sysusers.New(root),
				Run: func(context.Context, []string, string, ...string) error { ran = true; return nil }}
			err := p.Prepare(context.Background())
			if err == nil || !strings.Contains(err.Error(), "sets "+name) {
				t.Errorf("got %v, want an error naming %s", err, name)
			}
			if ran {
				t.Error("a command ran despite the refused variable")
			}
		})
	}
}

// Only the root-only copy counts: the proxy's file alone, or a copy in a
// directory another user owns, starts nothing.
func TestProxyWritableCopyIsNotUsed(t *testing.T) {
	t.Run("no root-only copy", func(t *testing.T) {
		dir := sandbox(t, "ISTIO_SVC_IP='10.9.0.2'\n")
		os.Remove(filepath.Join(dir, "var/lib/meshvm/secrets/cluster.env"))
		root, _ := fsroot.New(dir)
		p := &Preparer{Log: quietLog(), Root: root, Users: sysusers.New(root),
			Run: func(context.Context, []string, string, ...string) error { return nil }}
		if err := p.Prepare(context.Background()); err == nil || !strings.Contains(err.Error(), "no root-only copy") {
			t.Errorf("got %v, want an error naming the missing root-only copy", err)
		}
	})
	t.Run("copy in a directory istio-proxy owns", func(t *testing.T) {
		dir := sandbox(t, "ISTIO_SVC_IP='10.9.0.2'\n")
		os.Chown(filepath.Join(dir, "var/lib/meshvm/secrets"), 1337, 1338)
		root, _ := fsroot.New(dir)
		p := &Preparer{Log: quietLog(), Root: root, Users: sysusers.New(root),
			Run: func(context.Context, []string, string, ...string) error { return nil }}
		if err := p.Prepare(context.Background()); !errors.Is(err, fsroot.ErrUntrusted) {
			t.Errorf("got %v, want ErrUntrusted", err)
		}
	})
}

// cloud-init's manage_etc_hosts rewrites /etc/hosts on every boot without
// meshvm's block; the sidecar's start puts it back from the agent's record,
// once: a second start changes nothing.
func TestPrepareRestoresHostsBlock(t *testing.T) {
	dir := sandbox(t, "ISTIO_SVC_IP='10.9.0.2'\n")
	root, _ := fsroot.New(dir)
	block := []hostsfile.Entry{{IP: netip.MustParseAddr("10.213.0.1"), Names: []string{"istiod.istio-system.svc"}}}
	state := agentstate.New(root)
	if err := state.Update(true, func(rec *agentstate.Record) error { rec.Hosts = block; return nil }); err != nil {
		t.Fatal(err)
	}
	hosts := filepath.Join(dir, "etc/hosts")
	cloudInit := "127.0.1.1 vm1 vm1\n127.0.0.1 localhost\n"
	os.WriteFile(hosts, []byte(cloudInit), 0o644)
	p := &Preparer{Log: quietLog(), Root: root, Users: sysusers.New(root), State: state,
		Run: func(context.Context, []string, string, ...string) error { return nil }}
	if err := p.Prepare(context.Background()); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(hosts)
	want, _ := hostsfile.Merge([]byte(cloudInit), block)
	if string(got) != string(want) || !strings.HasPrefix(string(got), cloudInit) {
		t.Fatalf("got /etc/hosts\n%s\nwant cloud-init's lines and the block:\n%s", got, want)
	}
	var before, after syscall.Stat_t
	syscall.Stat(hosts, &before)
	if err := p.Prepare(context.Background()); err != nil {
		t.Fatal(err)
	}
	syscall.Stat(hosts, &after)
	if before.Ino != after.Ino {
		t.Error("a second prepare rewrote /etc/hosts, which already held the block")
	}
	if st, _ := os.Stat(hosts); st.Mode().Perm() != 0o644 {
		t.Errorf("got /etc/hosts mode %v, want 0644 kept", st.Mode())
	}
}
