// Package reason is the vocabulary of why something is not as it should
// be, for the packages below hostctl's CLI. They report a Reason (on a
// check's result, a progress event, or an *Error wrapping what failed) and
// never the command that fixes it: hostctl's CLI words that advice from the
// reason, in one table, and a controller sets the same reason on a
// condition.
package reason

import (
	"errors"
	"strings"
)

// Reason is one cause, in one CamelCase word a program can switch on.
type Reason string

// The reasons, by what finds them. A reason's advice names its arguments,
// where it takes any (listed after it); most take the VM's name.
const (
	None Reason = ""

	// A VM's machine (the VM).
	VMAbsent        Reason = "VMAbsent"        // no machine: up creates it
	VMNotFound      Reason = "VMNotFound"      // no machine for a command that needs one
	VMGone          Reason = "VMGone"          // no machine to read logs from (no args)
	VMNotRunning    Reason = "VMNotRunning"    // a command that needs it running
	VMStopped       Reason = "VMStopped"       // a check that needs it running
	VMNotRunningNow Reason = "VMNotRunningNow" // doctor's: not running
	VMNoAddress     Reason = "VMNoAddress"     // running, no address
	VMStoppedRenew  Reason = "VMStoppedRenew"  // vm renew of a stopped VM
	MachineTimedOut Reason = "MachineTimedOut" // Multipass gave up on an instance (no args)
	MachineLost     Reason = "MachineLost"     // Multipass lost touch with it (no args)
	MachineYours    Reason = "MachineYours"    // a machine you brought is not deleted (no args)

	// A VM's agent (the VM).
	AgentUnreachable  Reason = "AgentUnreachable"  // it did not answer
	AgentDown         Reason = "AgentDown"         // vm status: it did not answer
	AgentNotAnswering Reason = "AgentNotAnswering" // not after it was installed or started (no args)
	AgentOutdated     Reason = "AgentOutdated"     // older than this hostctl
	AgentOutdatedRPC  Reason = "AgentOutdatedRPC"  // it lacks what verify asks
	AgentNoCheck      Reason = "AgentNoCheck"      // it did not check the network

	// A VM's files, sidecar and WorkloadEntry (the VM).
	AddressMoved       Reason = "AddressMoved"       // its address changed since onboarding
	NoHostsFile        Reason = "NoHostsFile"        // the generated hosts file is missing
	IstiodUnresolved   Reason = "IstiodUnresolved"   // istiod does not resolve on it
	IstiodMisresolved  Reason = "IstiodMisresolved"  // it resolves elsewhere (doctor)
	HostsBlockStale    Reason = "HostsBlockStale"    // it resolves elsewhere (verify)
	IstiodDNSUnchecked Reason = "IstiodDNSUnchecked" // the agent did not resolve it
	IstiodAddrUnknown  Reason = "IstiodAddrUnknown"  // where the VM reaches istiod is unknown
	ProxySkewed        Reason = "ProxySkewed"        // the proxy is out of istiod's skew
	ProxyBuildDiffers  Reason = "ProxyBuildDiffers"  // its binaries are not the build sent
	ProxyBuildMissing  Reason = "ProxyBuildMissing"  // no build here to compare with
	CaptureUnsettled   Reason = "CaptureUnsettled"   // the capture rules not judged yet
	CaptureRestart     Reason = "CaptureRestart"     // the agent's fix is a sidecar restart
	TokenChanged       Reason = "TokenChanged"       // the token pilot-agent reads changed
	SidecarDown        Reason = "SidecarDown"        // the sidecar is not running
	NoEntry            Reason = "NoEntry"            // no WorkloadEntry: istiod not reached
	OwnAppUnhealthy    Reason = "OwnAppUnhealthy"    // app: false, not Healthy (the VM, the port)
	EntryStale         Reason = "EntryStale"         // Healthy, but its proxy disconnected
	EntryTimedOut      Reason = "EntryTimedOut"      // not registered or Healthy in time (no args)
	NotBackOnline      Reason = "NotBackOnline"      // vm start: not back in time
	TokenRevoked       Reason = "TokenRevoked"       // vm revoke: a new token takes onboarding
	TokenNotRevoked    Reason = "TokenNotRevoked"    // vm rm without a cluster
	RevisionKept       Reason = "RevisionKept"       // kept on its revision (the VM, the site's)
	NotBackOnRevision  Reason = "NotBackOnRevision"  // vm upgrade: roll back (the VM, its revision)
	NotDeclared        Reason = "NotDeclared"        // fleet mode: no MeshVM for it
	VMPaused           Reason = "VMPaused"           // fleet mode: its MeshVM is paused (vm revoke)
	NoFleetStore       Reason = "NoFleetStore"       // fleet mode: no agent CA in the cluster (no args)

	// A VM's credentials (the VM).
	CredentialsReissue    Reason = "CredentialsReissue"    // none valid: a new token heals it
	CredentialsRevoked    Reason = "CredentialsRevoked"    // its Secret is gone
	CredentialsRenewing   Reason = "CredentialsRenewing"   // pilot-agent should get a certificate
	CredentialsOverdue    Reason = "CredentialsOverdue"    // renewal overdue
	CredentialsTokenAging Reason = "CredentialsTokenAging" // the token is past half its life

	// The cluster, Istio and the workstation (no args unless said).
	ConfigField        Reason = "ConfigField"        // a config field does not parse
	ChangedWhileRead   Reason = "ChangedWhileRead"   // a local file changed under hostctl
	ClusterDown        Reason = "ClusterDown"        // doctor: the API server does not answer
	ClusterStopped     Reason = "ClusterStopped"     // cluster status: the API or a process is down
	ClusterNotUp       Reason = "ClusterNotUp"       // no kubeconfig
	ClusterUnreachable Reason = "ClusterUnreachable" // an API call failed: is it up?
	ClusterUnanswered  Reason = "ClusterUnanswered"  // istio status without a cluster
	IstiodNotReady     Reason = "IstiodNotReady"     // re-onboarding without istiod
	IstiodNotInstalled Reason = "IstiodNotInstalled" // doctor: no istiod serving
	IstioNotInstalled  Reason = "IstioNotInstalled"  // its Deployment or Service is not there
	IstioIncomplete    Reason = "IstioIncomplete"    // rendered objects missing
	IstioVersionDown   Reason = "IstioVersionDown"   // istiod's version unknown
	RevisionNotReady   Reason = "RevisionNotReady"   // no istiod of the revision (the revision)
	MeshConfigMissing  Reason = "MeshConfigMissing"  // no mesh config of the revision (the revision)
	NoGatewayAddress   Reason = "NoGatewayAddress"   // the east-west gateway has no address
	TwoIstios          Reason = "TwoIstios"          // meshvm's Istio and another
	LabVMsLeft         Reason = "LabVMsLeft"         // lab down left VMs the config does not list

	// Fleet mode's controller (no args).
	WorkloadNotUp  Reason = "WorkloadNotUp"  // Istio's or the workload's namespace is not there
	MeshVMsRemain  Reason = "MeshVMsRemain"  // uninstall with MeshVMs left
	ImageNotOnNode Reason = "ImageNotOnNode" // a node's containerd lacks the image
	ImageNotListed Reason = "ImageNotListed" // imported, but containerd does not list it
	K3sMissing     Reason = "K3sMissing"     // no k3s to load the image into
)

// Cause is a reason with the arguments its advice names, for a result to
// carry (a check's, a VM's status, a progress event).
type Cause struct {
	Reason Reason   `json:"reason,omitempty"`
	Args   []string `json:"-"`
}

// Because is the cause r with args.
func Because(r Reason, args ...string) Cause { return Cause{Reason: r, Args: args} }

// Error is err with the reason it happened and the arguments its advice
// names. Its message is err's: the advice is the CLI's to add.
type Error struct {
	Reason Reason
	Args   []string
	Err    error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Wrap gives err a reason; nil stays nil.
func Wrap(err error, r Reason, args ...string) error {
	if err == nil {
		return nil
	}
	return &Error{Reason: r, Args: args, Err: err}
}

// Of is the first reason err carries, outermost first.
func Of(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}

// Format is err's message with each reason it carries worded by word
// (the message, the cause) right after that reason's own message: a
// wrapping error's message holds its wrapped ones' as they are (fmt.Errorf's
// %w, errors.Join), in order, so each is replaced by its worded self.
func Format(err error, word func(msg string, c Cause) string) string {
	switch e := err.(type) {
	case *Error:
		return word(Format(e.Err, word), Cause{Reason: e.Reason, Args: e.Args})
	case interface{ Unwrap() error }:
		if inner := e.Unwrap(); inner != nil {
			return replaceInOrder(err.Error(), word, inner)
		}
	case interface{ Unwrap() []error }:
		return replaceInOrder(err.Error(), word, e.Unwrap()...)
	}
	return err.Error()
}

// replaceInOrder replaces each inner error's message in msg, searching on
// from where the last one ended, by its formatted self.
func replaceInOrder(msg string, word func(string, Cause) string, inner ...error) string {
	var b strings.Builder
	for _, in := range inner {
		if in == nil {
			continue
		}
		text := in.Error()
		i := strings.Index(msg, text)
		if i < 0 {
			continue
		}
		b.WriteString(msg[:i])
		b.WriteString(Format(in, word))
		msg = msg[i+len(text):]
	}
	b.WriteString(msg)
	return b.String()
}
