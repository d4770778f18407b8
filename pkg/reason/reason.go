// Package reason is the vocabulary of why something is not as it should
// be, for the packages below hostctl's CLI. They report a Reason (on a
// check's result, a progress event, or an *Error wrapping what failed) and
// never the command that fixes it: hostctl's CLI words that advice from the
// reason, in one table, and a controller sets the same reason on a
// condition.
package reason

import "errors"

// Reason is one cause, in one CamelCase word a program can switch on.
type Reason string

// The reasons, by what finds them. Args, where a reason takes any, are
// listed after it: the advice names them.
const (
	None Reason = ""

	// A VM's machine (args: VM).
	VMAbsent        Reason = "VMAbsent"        // no machine: up creates it
	VMNotFound      Reason = "VMNotFound"      // no machine for a command that needs one
	VMNotRunning    Reason = "VMNotRunning"    // a command that needs it running
	VMStopped       Reason = "VMStopped"       // a check that needs it running
	VMNotRunningNow Reason = "VMNotRunningNow" // doctor: up or vm start
	VMNoAddress     Reason = "VMNoAddress"     // running, no address
	VMStoppedRenew  Reason = "VMStoppedRenew"  // vm renew of a stopped VM
	VMGone          Reason = "VMGone"          // vm logs of a VM that is not there (no args)

	// A VM's agent (args: VM).
	AgentUnreachable  Reason = "AgentUnreachable"  // did not answer: up reinstalls it
	AgentDown         Reason = "AgentDown"         // status: unreachable agent (args: VM)
	AgentNotAnswering Reason = "AgentNotAnswering" // the patience for its start ran out
	AgentNotInstalled Reason = "AgentNotInstalled" // did not answer once installed
	AgentOutdated     Reason = "AgentOutdated"     // older than this hostctl
	AgentOutdatedRPC  Reason = "AgentOutdatedRPC"  // it lacks an RPC: up updates it
	AgentNoCheck      Reason = "AgentNoCheck"      // it did not check the network
	AgentNoCapture    Reason = "AgentNoCapture"    // it does not judge the capture rules
	AgentNoCaptureYet Reason = "AgentNoCaptureYet" // verify: not checked, older agent

	// A VM's files and mesh state (args: VM).
	AddressMoved       Reason = "AddressMoved"       // its address changed since onboarding
	NoHostsFile        Reason = "NoHostsFile"        // the generated hosts file is missing
	IstiodUnresolved   Reason = "IstiodUnresolved"   // istiod does not resolve on it
	IstiodMisresolved  Reason = "IstiodMisresolved"  // resolves elsewhere (doctor)
	HostsBlockStale    Reason = "HostsBlockStale"    // resolves elsewhere (verify)
	IstiodDNSUnchecked Reason = "IstiodDNSUnchecked" // the agent did not resolve it
	IstiodAddrUnknown  Reason = "IstiodAddrUnknown"  // where the VM reaches istiod is unknown
	ProxySkewed        Reason = "ProxySkewed"        // proxy version out of istiod's skew
	ProxyBuildDiffers  Reason = "ProxyBuildDiffers"  // sidecar binaries not the build sent
	ProxyBuildMissing  Reason = "ProxyBuildMissing"  // the build to compare with is absent
	NoIptables         Reason = "NoIptables"         // no firewall backend on the VM
	CaptureUnsettled   Reason = "CaptureUnsettled"   // capture not judged yet
	CaptureRestart     Reason = "CaptureRestart"     // the agent's fix is a sidecar restart
	TokenChanged       Reason = "TokenChanged"       // the token pilot-agent reads changed
	SidecarDown        Reason = "SidecarDown"        // the sidecar is not running
	NoEntry            Reason = "NoEntry"            // no WorkloadEntry: istiod not reached
	OwnAppUnhealthy    Reason = "OwnAppUnhealthy"    // app: false and not Healthy (args: VM, port)
	EntryStale         Reason = "EntryStale"         // Healthy but disconnected
	EntryTimedOut      Reason = "EntryTimedOut"      // no entry after the wait (no args)
	NotConnected       Reason = "NotConnected"       // the sidecar did not (re)connect (no args)
	NotReconnected     Reason = "NotReconnected"     // the restarted sidecar did not (no args)
	NotBackOnline      Reason = "NotBackOnline"      // vm start: not back in time
	TokenNotRevoked    Reason = "TokenNotRevoked"    // vm rm without a cluster
	TokenRevoked       Reason = "TokenRevoked"       // vm revoke: a new token takes onboard
	RevisionKept       Reason = "RevisionKept"       // a VM kept on its revision (args: VM, revision)
	NotBackOnRevision  Reason = "NotBackOnRevision"  // vm upgrade: roll back (args: VM, from revision)

	// Credentials (args: VM).
	CredentialsReissue    Reason = "CredentialsReissue"    // none valid: a new token heals it
	CredentialsRevoked    Reason = "CredentialsRevoked"    // its Secret is gone
	CredentialsRenewing   Reason = "CredentialsRenewing"   // pilot-agent should get a certificate
	CredentialsOverdue    Reason = "CredentialsOverdue"    // renewal overdue
	CredentialsTokenAging Reason = "CredentialsTokenAging" // the token nears its end

	// The cluster and Istio (no args unless said).
	ClusterDown        Reason = "ClusterDown"        // the API server does not answer
	ClusterNotUp       Reason = "ClusterNotUp"       // no kubeconfig: up or cluster up
	ClusterUnreachable Reason = "ClusterUnreachable" // an API call failed: is it up?
	ClusterNoAnswer    Reason = "ClusterNoAnswer"    // status: cluster up
	ClusterProcess     Reason = "ClusterProcess"     // a lab process is stopped
	ClusterStatusHint  Reason = "ClusterStatusHint"  // istio status without a cluster
	IstiodNotReady     Reason = "IstiodNotReady"     // re-onboarding without istiod
	IstiodNotInstalled Reason = "IstiodNotInstalled" // doctor: up installs it
	IstioNotInstalled  Reason = "IstioNotInstalled"  // status: istio install
	IstioIncomplete    Reason = "IstioIncomplete"    // rendered objects missing
	IstioVersionDown   Reason = "IstioVersionDown"   // istiod's version unknown
	RevisionNotReady   Reason = "RevisionNotReady"   // upgrade to a revision not running (args: revision)
	NoGatewayAddress   Reason = "NoGatewayAddress"   // the east-west gateway has no address
	LabVMsLeft         Reason = "LabVMsLeft"         // lab down left VMs not in the config
	MeshConfigMissing  Reason = "MeshConfigMissing"  // Istio's mesh config is not there
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
