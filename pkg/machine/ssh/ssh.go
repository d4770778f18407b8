// Package ssh is the machine provider for machines you bring: VMs or
// cluster nodes reached over SSH (golang.org/x/crypto/ssh). It cannot create
// or delete machines; it reaches them, runs commands as root (through
// `sudo -n` for a non-root user) and transfers files atomically.
//
// Host keys are pinned on first use in a known_hosts file in hostctl's state
// directory; a changed key is refused with the file to edit named.
package ssh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/meshvm/meshvm/pkg/machine"

	"github.com/meshvm/meshvm/pkg/reason"
)

// Host is one machine's connection details.
type Host struct {
	// Address is host or host:port (port 22 by default).
	Address string
	User    string
	// KeyFile is the private key to authenticate with.
	KeyFile string
}

// Provider reaches the configured hosts.
type Provider struct {
	hosts      map[string]Host
	knownHosts string
	timeout    time.Duration

	mu    sync.Mutex
	conns map[string]*ssh.Client
}

var _ machine.Provider = (*Provider)(nil)

// New returns a provider for hosts (by machine name) pinning host keys in
// knownHostsFile.
func New(hosts map[string]Host, knownHostsFile string) *Provider {
	return &Provider{hosts: hosts, knownHosts: knownHostsFile, timeout: 15 * time.Second, conns: map[string]*ssh.Client{}}
}

// Close closes every connection.
func (p *Provider) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for name, c := range p.conns {
		errs = append(errs, c.Close())
		delete(p.conns, name)
	}
	return errors.Join(errs...)
}

func (p *Provider) host(name string) (Host, error) {
	h, ok := p.hosts[name]
	if !ok {
		return Host{}, fmt.Errorf("%s: %w: add it under vms with address, user and key", name, machine.ErrNotFound)
	}
	if !strings.Contains(h.Address, ":") || strings.Count(h.Address, ":") > 1 && !strings.HasPrefix(h.Address, "[") {
		h.Address = net.JoinHostPort(h.Address, "22")
	}
	return h, nil
}

// client returns a cached connection, dialling and verifying the host key.
func (p *Provider) client(ctx context.Context, name string) (*ssh.Client, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[name]; ok {
		return c, nil
	}
	h, err := p.host(name)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(h.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("%s: ssh key: %w", name, err)
	}
	signer, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: ssh key %s: %w (a passphrase-protected key is not supported: remove the passphrase with ssh-keygen -p, or use another key)", name, h.KeyFile, err)
	}
	cfg := &ssh.ClientConfig{
		User:            h.User,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: p.pinHostKey,
		Timeout:         p.timeout,
	}
	d := net.Dialer{Timeout: p.timeout}
	conn, err := d.DialContext(ctx, "tcp", h.Address)
	if err != nil {
		return nil, fmt.Errorf("%s: ssh %s: %w", name, h.Address, err)
	}
	cc, chans, reqs, err := ssh.NewClientConn(conn, h.Address, cfg)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("%s: ssh %s@%s: %w", name, h.User, h.Address, err)
	}
	c := ssh.NewClient(cc, chans, reqs)
	p.conns[name] = c
	return c, nil
}

// pinHostKey accepts a known key, records an unknown host's key, and refuses
// a changed one.
func (p *Provider) pinHostKey(hostname string, remote net.Addr, key ssh.PublicKey) error {
	if _, err := os.Stat(p.knownHosts); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(p.knownHosts, nil, 0o600); err != nil {
			return err
		}
	}
	check, err := knownhosts.New(p.knownHosts)
	if err != nil {
		return fmt.Errorf("read %s: %w", p.knownHosts, err)
	}
	err = check(hostname, remote, key)
	var keyErr *knownhosts.KeyError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &keyErr) && len(keyErr.Want) > 0:
		return fmt.Errorf("the host key of %s changed since it was pinned in %s: if the machine was rebuilt, delete its line there and retry; otherwise someone may be intercepting the connection", hostname, p.knownHosts)
	case errors.As(err, &keyErr):
		f, err := os.OpenFile(p.knownHosts, os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = fmt.Fprintln(f, knownhosts.Line([]string{knownhosts.Normalize(hostname)}, key))
		return err
	}
	return err
}

// sudo prefixes a command for a non-root user.
func sudo(user string, args []string) string {
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = machine.ShellQuote(a)
	}
	cmd := strings.Join(quoted, " ")
	if user == "root" {
		return cmd
	}
	return "sudo -n -- " + cmd
}

// Exec runs args as root on the machine.
func (p *Provider) Exec(ctx context.Context, name string, stdin io.Reader, args ...string) ([]byte, error) {
	h, err := p.host(name)
	if err != nil {
		return nil, err
	}
	c, err := p.client(ctx, name)
	if err != nil {
		return nil, err
	}
	s, err := c.NewSession()
	if err != nil {
		p.drop(name)
		return nil, fmt.Errorf("%s: ssh session: %w", name, err)
	}
	defer s.Close()
	// stdout and stderr are copied by two goroutines: one locked buffer.
	out := &lockedBuffer{}
	s.Stdout, s.Stderr, s.Stdin = out, out, stdin
	done := make(chan error, 1)
	go func() { done <- s.Run(sudo(h.User, args)) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		s.Signal(ssh.SIGKILL)
		return out.Bytes(), ctx.Err()
	}
	if err != nil {
		msg := strings.TrimSpace(out.String())
		if strings.Contains(msg, "sudo: a password is required") {
			return out.Bytes(), fmt.Errorf("%s: %s needs passwordless sudo for hostctl: add a NOPASSWD sudoers rule or use root", name, h.User)
		}
		return out.Bytes(), fmt.Errorf("%s: %s: %w: %s", name, strings.Join(args, " "), err, lastLine(msg))
	}
	return out.Bytes(), nil
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Bytes()
}

func (b *lockedBuffer) String() string { return string(b.Bytes()) }

func (p *Provider) drop(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[name]; ok {
		c.Close()
		delete(p.conns, name)
	}
}

// Transfer streams data into a temporary file beside path, syncs it and
// renames it over path, so a broken transfer leaves the old file.
func (p *Provider) Transfer(ctx context.Context, name, dst string, data io.Reader, mode os.FileMode) error {
	if !path.IsAbs(dst) {
		return fmt.Errorf("%s: transfer destination %q must be absolute", name, dst)
	}
	if _, err := p.Exec(ctx, name, data, "sh", "-c", machine.AtomicWriteScript(dst, mode)); err != nil {
		p.Exec(context.Background(), name, nil, "rm", "-f", machine.TempPath(dst))
		return fmt.Errorf("transfer to %s: %w", dst, err)
	}
	return nil
}

// Launch cannot create a machine you bring; it checks that it is reachable
// with root rights and reports it.
func (p *Provider) Launch(ctx context.Context, s machine.Spec) (machine.Machine, error) {
	return p.Info(ctx, s.Name)
}

// Info reaches the machine and reports its address and architecture.
func (p *Provider) Info(ctx context.Context, name string) (machine.Machine, error) {
	h, err := p.host(name)
	if err != nil {
		return machine.Machine{}, err
	}
	out, err := p.Exec(ctx, name, nil, "uname", "-m")
	if err != nil {
		return machine.Machine{}, err
	}
	host, _, _ := net.SplitHostPort(h.Address)
	return machine.Machine{Name: name, State: machine.Running, Addresses: []string{host}, Arch: machine.GoArch(strings.TrimSpace(string(out)))}, nil
}

// Delete refuses: hostctl does not destroy machines it did not create.
func (p *Provider) Delete(ctx context.Context, name string) error {
	return reason.Wrap(fmt.Errorf("%s: provider ssh does not delete machines you brought: remove the VM yourself", name), reason.MachineYours)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
