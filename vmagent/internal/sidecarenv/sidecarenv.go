// Package sidecarenv prepares the sidecar's start as root, which the
// package's istio-start.sh did: it restores the token that /run lost at boot,
// puts meshvm's block back into /etc/hosts, computes pilot-agent's
// environment from sidecar.env and cluster.env, and installs or cleans the
// traffic capture rules through `pilot-agent istio-iptables`. The istio unit
// calls it through `vmagent sidecar prepare` and `vmagent sidecar cleanup`.
//
// This code runs as root, so it trusts nothing istio-proxy can write. The
// delivered files sit in /var/lib/istio/envoy, a directory istio-proxy owns
// (as the package makes it): it could swap them at any time. So root reads
// only the copies vmfiles keeps in its root-only directory, refuses PATH and
// loader variables in them outright, and gives the root child
// (istio-iptables) a fixed PATH and only the variables istio-iptables reads,
// by name, never its own environment (systemd loads the sidecar's
// EnvironmentFile into the '+' hooks too).
package sidecarenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"github.com/meshvm/meshvm/pkg/agentspec"
	"github.com/meshvm/meshvm/pkg/envfile"
	"github.com/meshvm/meshvm/pkg/fsroot"
	"github.com/meshvm/meshvm/vmagent/internal/agentstate"
	"github.com/meshvm/meshvm/vmagent/internal/capture"
	"github.com/meshvm/meshvm/vmagent/internal/hostsfile"
	"github.com/meshvm/meshvm/vmagent/internal/postinst"
	"github.com/meshvm/meshvm/vmagent/internal/sysusers"
	"github.com/meshvm/meshvm/vmagent/internal/vmfiles"
)

const (
	sidecarEnv = "/var/lib/istio/envoy/sidecar.env"
	clusterEnv = "/var/lib/istio/envoy/cluster.env"
	tokenPath  = agentspec.TokenPath
	pilotAgent = "/usr/local/bin/pilot-agent"
	hostsPath  = "/etc/hosts"
	// maxHosts bounds the read of /etc/hosts (root's, but large on some hosts).
	maxHosts = 16 << 20
)

// rootPath is the only PATH a root child gets.
const rootPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// iptablesInputs are the variables `pilot-agent istio-iptables` reads
// (tools/istio-iptables/pkg/cmd/root.go: each flag upper-cased, plus its
// aliases), less those that point it elsewhere than this VM's own network
// (NETWORK_NAMESPACE, CNI_MODE) or only serve the CNI's validation.
var iptablesInputs = []string{
	"ENVOY_PORT", "INBOUND_CAPTURE_PORT", "INBOUND_TUNNEL_PORT", "PROXY_UID", "PROXY_GID", "ENVOY_USER",
	"ISTIO_INBOUND_INTERCEPTION_MODE", "ISTIO_INBOUND_TPROXY_MARK", "ISTIO_INBOUND_TPROXY_ROUTE_TABLE",
	"ISTIO_INBOUND_PORTS", "ISTIO_LOCAL_EXCLUDE_PORTS", "ISTIO_EXCLUDE_INTERFACES",
	"ISTIO_SERVICE_CIDR", "ISTIO_SERVICE_EXCLUDE_CIDR", "ISTIO_OUTBOUND_PORTS", "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
	"KUBE_VIRT_INTERFACES", "REDIRECT_DNS", "ISTIO_META_DNS_CAPTURE", "CAPTURE_ALL_DNS",
	"DROP_INVALID", "INVALID_DROP", "DUAL_STACK", "ISTIO_DUAL_STACK",
	"RECONCILE", "FORCE_APPLY", "NATIVE_NFTABLES", "FORCE_IPTABLES_BINARY",
}

// refused are variables no environment file may set: they choose what a
// process runs or loads (glibc's unsecvars, the shells' startup files), and
// systemd hands the sidecar's environment to the unit's root hooks too.
var refused = []string{"PATH", "IFS", "BASH_ENV", "ENV", "SHELLOPTS", "PS4",
	"GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH", "MALLOC_TRACE",
	"NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS", "TMPDIR", "TZDIR"}

func refusedName(k string) bool {
	return strings.HasPrefix(k, "LD_") || slices.Contains(refused, k)
}

// childEnv is the whole environment of a root child: the fixed PATH and the
// istio-iptables inputs of env, nothing else.
func childEnv(env map[string]string) []string {
	out := []string{rootPath}
	for _, k := range iptablesInputs {
		if v, ok := env[k]; ok {
			out = append(out, k+"="+v)
		}
	}
	return out
}

// Host is what the environment depends on besides the files.
type Host struct {
	// Hostname is the short host name (POD_NAME default).
	Hostname string
	// FirstIP is the first global address (INSTANCE_IP default).
	FirstIP string
	// Addresses are all the VM's global addresses (nil: not known).
	Addresses []string
	// ProxyUID and ProxyGID are istio-proxy's ids, exempt from capture.
	ProxyUID, ProxyGID int
}

// Compute returns pilot-agent's environment: every variable of the files, plus
// what istio-start.sh derives from them.
func Compute(files map[string]string, h Host) (map[string]string, error) {
	env := make(map[string]string, len(files)+12)
	for k, v := range files {
		env[k] = v
	}
	def := func(k, v string) {
		if env[k] == "" {
			env[k] = v
		}
	}
	if env["ISTIO_INBOUND_INTERCEPTION_MODE"] == "TPROXY" {
		return nil, fmt.Errorf("ISTIO_INBOUND_INTERCEPTION_MODE=TPROXY needs the proxy to run as root, which the vmagent unit does not do: use REDIRECT (the default)")
	}
	def("ISTIO_SYSTEM_NAMESPACE", "istio-system")
	ns := env["ISTIO_NAMESPACE"]
	if ns == "" {
		ns = "default"
	}
	svc := env["ISTIO_SERVICE"]
	if svc == "" {
		svc = "rawvm"
	}
	if env[agentspec.FollowAddressKey] == "true" && h.FirstIP != "" && h.Addresses != nil && !holds(h.Addresses, env["ISTIO_SVC_IP"]) {
		// The VM moved: registered at the address it left, the proxy could
		// not be reached nor the VM found; meshvm sends the new one later.
		env["ISTIO_SVC_IP"] = h.FirstIP
	}
	def("ISTIO_SVC_IP", h.FirstIP)
	if env["ISTIO_SVC_IP"] == "" {
		return nil, fmt.Errorf("no address for the sidecar: set ISTIO_SVC_IP in cluster.env or give the VM a global address")
	}
	def("POD_NAME", h.Hostname)
	env["INSTANCE_IP"] = env["ISTIO_SVC_IP"]
	env["POD_NAMESPACE"] = ns

	pilot := env["PILOT_ADDRESS"]
	if pilot == "" && env["ISTIO_PILOT_PORT"] != "" {
		pilot = "istiod." + env["ISTIO_SYSTEM_NAMESPACE"] + ".svc:" + env["ISTIO_PILOT_PORT"]
	}
	if pilot != "" {
		def("CA_ADDR", pilot)
	}
	def("CA_ADDR", "istiod."+env["ISTIO_SYSTEM_NAMESPACE"]+".svc:15012")
	if _, set := env["PROV_CERT"]; !set {
		env["PROV_CERT"] = "./etc/certs"
	}
	if _, set := env["OUTPUT_CERTS"]; !set {
		env["OUTPUT_CERTS"] = "./etc/certs"
	}
	if env["PROXY_CONFIG"] == "" {
		auth := env["ISTIO_CP_AUTH"]
		if auth == "" {
			auth = "MUTUAL_TLS"
		}
		// Flow style keeps it on one line, as systemd environment files need.
		env["PROXY_CONFIG"] = fmt.Sprintf("{serviceCluster: %q, controlPlaneAuthPolicy: %s}", svc, auth)
		if pilot != "" {
			env["PROXY_CONFIG"] = fmt.Sprintf("{discoveryAddress: %q}", pilot)
		}
	} else if strings.Contains(env["PROXY_CONFIG"], "\n") {
		return nil, fmt.Errorf("PROXY_CONFIG spans several lines: write it on one line in YAML flow style, e.g. {discoveryAddress: \"istiod.istio-system.svc:15012\"}")
	}
	def("ISTIO_AGENT_FLAGS", "")
	// istio-iptables exempts these ids from capture; its default gid is the uid.
	env["PROXY_UID"] = strconv.Itoa(h.ProxyUID)
	env["PROXY_GID"] = strconv.Itoa(h.ProxyGID)
	return env, nil
}

// Proxyless says pilot-agent runs without Envoy (DISABLE_ENVOY=true, as
// Istio's grpc-agent template sets it): there is no proxy to capture
// traffic for, so there are no capture rules.
func Proxyless(env map[string]string) bool { return env["DISABLE_ENVOY"] == "true" }

// Preparer runs the root-side start and stop work of the sidecar unit.
type Preparer struct {
	Log   *slog.Logger
	Root  *fsroot.Root
	Users *sysusers.DB
	// State holds the hosts block Install wrote, which Prepare puts back.
	State *agentstate.Store
	// AgentPort is where vmagent listens: its replies are kept out of the capture.
	AgentPort int
	// Run executes a command with env, its whole environment; tests may
	// replace it.
	Run func(ctx context.Context, env []string, name string, args ...string) error
	// ReadRules reads the rules of both iptables backends (capture.Read
	// on the root's tools when nil).
	ReadRules func(ctx context.Context) capture.Saves
	// Validate runs Istio's validator as the proxy user (capture.Validate
	// on the root's pilot-agent when nil).
	Validate func(ctx context.Context, uid, gid int, env map[string]string) capture.Validation
}

// Prepare restores the token and the hosts block, writes the unit's
// environment file and installs the capture rules.
func (p *Preparer) Prepare(ctx context.Context) error {
	u, ok, err := p.Users.LookupUser("istio-proxy")
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("user istio-proxy does not exist: run hostctl vm onboard to install the sidecar")
	}
	if err := p.restoreToken(u); err != nil {
		return err
	}
	// Without the block istiod may still resolve through DNS: warn, go on.
	if err := p.restoreHosts(); err != nil {
		p.Log.Warn("could not put meshvm's block back into /etc/hosts", "err", err)
	}
	env, err := p.environment(u)
	if err != nil {
		return err
	}
	data, err := envfile.FormatSystemd(env)
	if err != nil {
		return err
	}
	dir := fsroot.DirOptions{Mode: 0o755}
	if err := p.Root.WriteBytes(postinst.SidecarEnvPath, data, fsroot.WriteOptions{Mode: 0o600, Dir: &dir}); err != nil {
		return fmt.Errorf("write sidecar environment: %w", err)
	}
	// A validation of earlier rules says nothing of the ones in force next.
	if err := capture.Forget(p.Root); err != nil {
		return err
	}
	if env["ISTIO_CUSTOM_IP_TABLES"] == "true" {
		p.Log.Info("ISTIO_CUSTOM_IP_TABLES=true: leaving the capture rules to the operator")
		return nil
	}
	if Proxyless(env) {
		// Rules of an earlier start with Envoy would send the app's traffic
		// to a proxy that is not there.
		p.Log.Info("DISABLE_ENVOY=true (proxyless gRPC): no capture rules; removing any an earlier start left")
		return p.cleanup(ctx, env)
	}
	list := childEnv(env)
	if err := p.cleanup(ctx, env); err != nil {
		return err
	}
	if err := p.run(ctx, list, pilotAgent, "istio-iptables"); err != nil {
		return err
	}
	if err := p.exemptAgent(ctx, true); err != nil {
		return err
	}
	p.validate(ctx, u, env)
	return nil
}

// validate runs Istio's validator before the proxy binds its ports and
// records the outcome for the agent's status. A failure does not stop the
// start: the sidecar still reaches istiod, and the status names the fault.
func (p *Preparer) validate(ctx context.Context, u sysusers.User, env map[string]string) {
	run := p.Validate
	if run == nil {
		run = func(ctx context.Context, uid, gid int, env map[string]string) capture.Validation {
			return capture.Validate(ctx, p.Root.HostPath(pilotAgent), uid, gid, env)
		}
	}
	v := run(ctx, u.UID, u.GID, env)
	if v.Passed {
		p.Log.Info("Istio's capture validation passed", "output", v.Output)
	} else {
		p.Log.Error("Istio's capture validation failed: the redirect did not take a connection from the proxy user", "output", v.Output)
	}
	if err := capture.Save(p.Root, v); err != nil {
		p.Log.Warn("could not record the capture validation", "err", err)
	}
}

// cleanup removes Istio's rules from every backend holding them. Istio's
// --cleanup-only cleans only the backend it detects (legacy as soon as
// legacy tables exist), so rules an earlier run left in the other backend
// would capture alongside the new ones: each backend still holding chains
// afterwards gets its own cleanup, forced to it.
func (p *Preparer) cleanup(ctx context.Context, env map[string]string) error {
	if err := p.run(ctx, childEnv(env), pilotAgent, "istio-iptables", "--cleanup-only"); err != nil {
		return err
	}
	read := p.ReadRules
	if read == nil {
		read = func(ctx context.Context) capture.Saves {
			var dirs []string
			for _, d := range capture.DefaultDirs {
				dirs = append(dirs, p.Root.HostPath(d))
			}
			return capture.Read(ctx, dirs)
		}
	}
	for _, b := range capture.Held(read(ctx)) {
		forced := maps.Clone(env)
		if forced == nil {
			forced = map[string]string{}
		}
		forced["FORCE_IPTABLES_BINARY"] = strings.TrimPrefix(b, "iptables-")
		p.Log.Warn("Istio's capture rules were left in a second backend: removing them", "backend", b)
		if err := p.run(ctx, childEnv(forced), pilotAgent, "istio-iptables", "--cleanup-only"); err != nil {
			return err
		}
	}
	return nil
}

// iptablesTools are the front ends istio-iptables may have used; the one
// holding its ISTIO_OUTPUT chain gets the agent's exemption.
var iptablesTools = []string{"/usr/sbin/iptables-legacy", "/usr/sbin/iptables-nft", "/usr/sbin/iptables",
	"/usr/sbin/ip6tables-legacy", "/usr/sbin/ip6tables-nft", "/usr/sbin/ip6tables"}

// exemptAgent adds (or removes) a rule returning the agent's replies before
// the capture. Without it, rules installed while hostctl's connection is
// open redirect the agent's next reply to Envoy (conntrack takes it for a
// new flow): the very call that started the sidecar loses its connection
// and waits for keepalive to notice.
func (p *Preparer) exemptAgent(ctx context.Context, add bool) error {
	if p.AgentPort == 0 {
		return nil
	}
	rule := []string{"OUTPUT", "-p", "tcp", "--sport", strconv.Itoa(p.AgentPort), "-j", "RETURN"}
	for _, tool := range iptablesTools {
		if _, err := p.Root.Stat(tool); err != nil {
			continue
		}
		present := p.try(ctx, tool, append([]string{"-w", "-t", "nat", "-C"}, rule...)...)
		switch {
		case add && !present && p.try(ctx, tool, "-w", "-t", "nat", "-S", "ISTIO_OUTPUT"):
			if err := p.run(ctx, childEnv(nil), tool, append([]string{"-w", "-t", "nat", "-I", rule[0], "1"}, rule[1:]...)...); err != nil {
				return err
			}
		case !add && present:
			if err := p.run(ctx, childEnv(nil), tool, append([]string{"-w", "-t", "nat", "-D"}, rule...)...); err != nil {
				return err
			}
		}
	}
	return nil
}

// try runs a check command and reports whether it succeeded, quietly.
func (p *Preparer) try(ctx context.Context, name string, args ...string) bool {
	if p.Run != nil {
		return p.Run(ctx, childEnv(nil), name, args...) == nil
	}
	cmd := exec.CommandContext(ctx, p.Root.HostPath(name), args...)
	cmd.Env = childEnv(nil)
	return cmd.Run() == nil
}

// Cleanup removes the capture rules after the sidecar stopped.
func (p *Preparer) Cleanup(ctx context.Context) error {
	files, err := p.readFiles()
	if err != nil {
		return err
	}
	if files["ISTIO_CUSTOM_IP_TABLES"] == "true" {
		return nil
	}
	if err := p.exemptAgent(ctx, false); err != nil {
		return err
	}
	if err := capture.Forget(p.Root); err != nil {
		return err
	}
	return p.cleanup(ctx, files)
}

func (p *Preparer) run(ctx context.Context, env []string, name string, args ...string) error {
	if p.Run != nil {
		return p.Run(ctx, env, name, args...)
	}
	cmd := exec.CommandContext(ctx, p.Root.HostPath(name), args...)
	cmd.Env = env // never os.Environ(): systemd filled it from a file
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w (its output is in the istio unit's journal)", name, strings.Join(args, " "), err)
	}
	return nil
}

// restoreToken copies the reboot-proof token back under /run when it is
// missing or stale there.
func (p *Preparer) restoreToken(u sysusers.User) error {
	spec, _ := vmfiles.Lookup(tokenPath)
	want, err := p.Root.ReadTrusted(spec.PersistAt, spec.MaxSize)
	if errors.Is(err, fs.ErrNotExist) {
		p.Log.Warn("no persisted istio-token: pilot-agent will renew with its existing certificate, or run hostctl vm onboard")
		return nil
	}
	if err != nil {
		return err
	}
	// The /run copy is istio-proxy's: read it bounded, and replace anything
	// that is not the same regular file.
	if have, err := p.Root.ReadLimited(tokenPath, spec.MaxSize); err == nil && bytes.Equal(have, want) {
		return nil
	}
	dir := fsroot.DirOptions{Mode: spec.ParentDir.Mode, UID: u.UID, GID: u.GID}
	err = p.Root.WriteBytes(tokenPath, want, fsroot.WriteOptions{Mode: 0o600, UID: u.UID, GID: u.GID, Dir: &dir})
	if err != nil {
		return fmt.Errorf("restore istio-token: %w", err)
	}
	p.Log.Info("restored istio-token from its persisted copy", "path", tokenPath)
	return nil
}

// readFiles reads sidecar.env (optional) and cluster.env from the root-only
// copies vmfiles keeps, never from /var/lib/istio/envoy.
func (p *Preparer) readFiles() (map[string]string, error) {
	files := map[string]string{}
	for _, f := range []struct {
		path     string
		required bool
	}{{sidecarEnv, false}, {clusterEnv, true}} {
		spec, _ := vmfiles.Lookup(f.path)
		data, err := p.Root.ReadTrusted(spec.PersistAt, spec.MaxSize)
		if errors.Is(err, fs.ErrNotExist) && !f.required {
			continue
		}
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s has no root-only copy at %s: run hostctl vm onboard to deliver the workload files", f.path, spec.PersistAt)
		}
		if err != nil {
			return nil, err
		}
		one := maps.Clone(files)
		if err := envfile.Parse(f.path, data, one); err != nil {
			return nil, err
		}
		for k := range one {
			if refusedName(k) {
				return nil, fmt.Errorf("%s sets %s: an environment file may not set PATH or loader variables (they would reach root processes); remove it and deliver the file again", f.path, k)
			}
		}
		files = one
	}
	return files, nil
}

// restoreHosts puts the block Install wrote back into /etc/hosts when it is
// missing or differs, from the agent's root-only record. On Multipass,
// cloud-init's manage_etc_hosts rewrites /etc/hosts from its template on
// every boot and drops the block (istiod's name). Re-asserting it here, in
// the unit's root ExecStartPre ordered after cloud-init's rewrite, holds
// whatever cloud-init's configuration says and edits none of the user's.
func (p *Preparer) restoreHosts() error {
	if p.State == nil {
		return nil
	}
	rec, err := p.State.Load()
	if err != nil {
		return err
	}
	if len(rec.Hosts) == 0 {
		return nil
	}
	content, err := p.Root.ReadTrusted(hostsPath, maxHosts)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("restore the hosts block: %w", err)
	}
	merged, err := hostsfile.Merge(content, rec.Hosts)
	if err != nil {
		return fmt.Errorf("restore the hosts block: %s: %w", hostsPath, err)
	}
	if bytes.Equal(merged, content) {
		return nil
	}
	opts := fsroot.WriteOptions{Mode: 0o644}
	if info, err := p.Root.Stat(hostsPath); err == nil {
		opts.Mode, opts.UID, opts.GID = info.Mode.Perm(), info.UID, info.GID
	}
	if err := p.Root.WriteBytes(hostsPath, merged, opts); err != nil {
		return fmt.Errorf("restore the hosts block: %w", err)
	}
	p.Log.Info("put meshvm's block back into /etc/hosts (something rewrote the file, e.g. cloud-init's manage_etc_hosts)", "entries", len(rec.Hosts))
	return nil
}

func (p *Preparer) environment(u sysusers.User) (map[string]string, error) {
	files, err := p.readFiles()
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	host, _, _ = strings.Cut(host, ".")
	ips := GlobalIPs()
	first := ""
	if len(ips) > 0 {
		first = ips[0]
	}
	return Compute(files, Host{Hostname: host, FirstIP: first, Addresses: ips, ProxyUID: u.UID, ProxyGID: u.GID})
}

// holds says whether addr is one of addrs, however either is written.
func holds(addrs []string, addr string) bool {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return false
	}
	for _, s := range addrs {
		if b, err := netip.ParseAddr(s); err == nil && b.Unmap() == a.Unmap() {
			return true
		}
	}
	return false
}

// GlobalIPs are the global unicast addresses in interface order, as
// `hostname --all-ip-addresses` lists them; nil when the interfaces cannot
// be read.
func GlobalIPs() []string {
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil
	}
	ips := []string{}
	for _, ifc := range ifaces {
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.IsGlobalUnicast() {
				ips = append(ips, n.IP.String())
			}
		}
	}
	return ips
}
