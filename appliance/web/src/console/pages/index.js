// The console's pages: each belongs to one role of 三员分立 and is shown when the
// session holds `permission` (the admin API's operation its first call needs).
import * as auditor from "./auditor.js";
import * as secadmin from "./secadmin.js";
import * as sessions from "./sessions.js";
import * as sysadmin from "./sysadmin.js";

export const PAGES = [
  { id: "users", role: "sysadmin", permission: "user.list", render: sysadmin.users },
  { id: "org", role: "sysadmin", permission: "org.list", render: sysadmin.org },
  { id: "groups", role: "sysadmin", permission: "group.list", render: sysadmin.groups },
  { id: "status", role: "sysadmin", permission: "user.list", render: sysadmin.status },
  { id: "config", role: "sysadmin", permission: "config.read", render: sysadmin.config },
  { id: "admins", role: "secadmin", permission: "role.list", render: secadmin.admins },
  { id: "sessions", role: "secadmin", permission: "user_session.list", render: sessions.sessions },
  { id: "keys", role: "secadmin", permission: "key.rotate", render: secadmin.keys },
  { id: "policy", role: "secadmin", permission: "policy.read", render: secadmin.policy },
  { id: "retention", role: "secadmin", permission: "retention.read", render: secadmin.retention },
  { id: "approvals", role: "secadmin", permission: "escrow.approve", render: secadmin.approvals },
  { id: "audit", role: "auditor", permission: "audit.read", render: auditor.audit },
  { id: "report", role: "auditor", permission: "report.read", render: auditor.report },
  { id: "drills", role: "auditor", permission: "report.read", render: auditor.drills },
  { id: "export", role: "auditor", permission: "export.messages", render: auditor.exportPage },
  { id: "escrow", role: "auditor", permission: "escrow.request", render: auditor.escrow },
  { id: "retained", role: "auditor", permission: "retention.inspect",
    render: (el, ctx) => secadmin.retention(el, { ...ctx, readOnly: true }) },
];
