package ssh

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// sshd runs a real OpenSSH server on a loopback port with its own host key
// and one authorized key for root. It returns the address and the client key file.
type sshd struct {
	addr, clientKey, dir string
	cmd                  *exec.Cmd
}

func writeKey(t *testing.T, path string) ssh.PublicKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return sshPub
}

func startSSHD(t *testing.T, dir, hostKey string) *sshd {
	t.Helper()
	bin, err := exec.LookPath("sshd")
	if err != nil {
		bin = "/usr/sbin/sshd"
		if _, err := os.Stat(bin); err != nil {
			t.Skip("needs sshd: apt-get install openssh-server")
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("sshd needs root")
	}
	os.MkdirAll("/run/sshd", 0o755) // privilege separation directory
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, port, _ := net.SplitHostPort(addr)
	clientKey := filepath.Join(dir, "id_ed25519")
	if _, err := os.Stat(clientKey); err != nil {
		pub := writeKey(t, clientKey)
		os.WriteFile(filepath.Join(dir, "authorized_keys"), ssh.MarshalAuthorizedKey(pub), 0o600)
	}
	cfg := fmt.Sprintf("Port %s\nListenAddress 127.0.0.1\nHostKey %s\nAuthorizedKeysFile %s\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n",
		port, hostKey, filepath.Join(dir, "authorized_keys"))
	cfgPath := filepath.Join(dir, "sshd_config")
	os.WriteFile(cfgPath, []byte(cfg), 0o600)
	cmd := exec.Command(bin, "-D", "-e", "-f", cfgPath)
	// A file, not a pipe: per-connection children keep a pipe open past Kill.
	logf, err := os.Create(filepath.Join(dir, "sshd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &sshd{addr: addr, clientKey: clientKey, dir: dir, cmd: cmd}
	t.Cleanup(s.stop)
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := os.ReadFile(logf.Name())
			t.Logf("sshd log:\n%s", logs)
		}
	})
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return s
		}
		if i > 100 {
			logs, _ := os.ReadFile(logf.Name())
			t.Fatalf("sshd did not listen: %s", logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *sshd) stop() {
	if s.cmd.Process != nil && s.cmd.ProcessState == nil {
		// The whole group: the listener and its per-connection children.
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		s.cmd.Wait()
	}
}

func TestExecTransferAndHostKeyPinning(t *testing.T) {
	dir := t.TempDir()
	hostKey := filepath.Join(dir, "host_key")
	writeKey(t, hostKey)
	d := startSSHD(t, dir, hostKey)
	known := filepath.Join(dir, "known_hosts")
	p := New(map[string]Host{"vm1": {Address: d.addr, User: "root", KeyFile: d.clientKey}}, known)
	defer p.Close()
	ctx := context.Background()

	m, err := p.Info(ctx, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	if m.Addresses[0] != "127.0.0.1" || (m.Arch != "amd64" && m.Arch != "arm64") {
		t.Errorf("got %+v, want 127.0.0.1 and this machine's arch", m)
	}
	pinned, _ := os.ReadFile(known)
	if !strings.Contains(string(pinned), "ssh-ed25519") {
		t.Errorf("known_hosts after first contact: %q, want the host key pinned", pinned)
	}

	out, err := p.Exec(ctx, "vm1", strings.NewReader("hello"), "sh", "-c", "cat; echo \" as $(id -un)\"")
	if err != nil || strings.TrimSpace(string(out)) != "hello as root" {
		t.Errorf("exec: got %q, %v", out, err)
	}
	if _, err := p.Exec(ctx, "vm1", nil, "false"); err == nil {
		t.Error("a failing command gave no error")
	}

	dst := filepath.Join(dir, "remote", "vmagent")
	data := bytes.Repeat([]byte("agent"), 100000)
	if err := p.Transfer(ctx, "vm1", dst, bytes.NewReader(data), 0o755); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(dst)
	st, _ := os.Stat(dst)
	if !bytes.Equal(got, data) || st.Mode().Perm() != 0o755 {
		t.Errorf("transfer: got %d bytes mode %v, want %d bytes 0755", len(got), st.Mode(), len(data))
	}
	ents, _ := os.ReadDir(filepath.Dir(dst))
	if len(ents) != 1 {
		t.Errorf("got %d entries beside the file, want no temporary file left", len(ents))
	}

	if err := p.Delete(ctx, "vm1"); err == nil || !strings.Contains(err.Error(), "does not delete") {
		t.Errorf("delete: got %v, want a refusal", err)
	}
	if _, err := p.Info(ctx, "vm9"); err == nil || !strings.Contains(err.Error(), "add it under vms") {
		t.Errorf("unknown machine: got %v", err)
	}

	// The machine is rebuilt with a new host key: refused, naming the file.
	d.stop()
	writeKey(t, hostKey)
	d2 := startSSHD(t, dir, hostKey)
	p2 := New(map[string]Host{"vm1": {Address: d2.addr, User: "root", KeyFile: d.clientKey}}, known)
	defer p2.Close()
	// A new port is a new known_hosts entry; reuse the pinned one's port by
	// pinning under the same name: copy the old line to the new address.
	old, _ := os.ReadFile(known)
	line := strings.Replace(string(old), "[127.0.0.1]:"+port(d.addr), "[127.0.0.1]:"+port(d2.addr), 1)
	os.WriteFile(known, []byte(line), 0o600)
	_, err = p2.Info(ctx, "vm1")
	if err == nil || !strings.Contains(err.Error(), "changed since it was pinned in "+known) {
		t.Fatalf("got %v, want a changed-host-key refusal naming %s", err, known)
	}
}

func port(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }
