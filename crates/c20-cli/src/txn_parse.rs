//! Parses a txn in etcdctl's stdin format: compares, a blank line, success ops, a blank line,
//! failure ops.
//!
//! ```text
//! value("k") = "v"
//! mod("k") > "3"
//!
//! put k "new value"
//! get k
//!
//! del k
//! ```

use c20_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use c20_api::etcdserverpb::{
    request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

pub fn parse(input: &str) -> Result<TxnRequest, String> {
    let mut sections: Vec<Vec<&str>> = vec![Vec::new()];
    for line in input.lines() {
        let line = line.trim();
        if line.is_empty() {
            if sections.len() < 3 {
                sections.push(Vec::new());
            }
            continue;
        }
        sections
            .last_mut()
            .expect("one section at least")
            .push(line);
    }
    sections.resize(3, Vec::new());
    let compare = sections[0]
        .iter()
        .map(|l| parse_compare(l))
        .collect::<Result<_, _>>()?;
    let success = sections[1]
        .iter()
        .map(|l| parse_op(l))
        .collect::<Result<_, _>>()?;
    let failure = sections[2]
        .iter()
        .map(|l| parse_op(l))
        .collect::<Result<_, _>>()?;
    Ok(TxnRequest {
        compare,
        success,
        failure,
    })
}

/// Splits on whitespace, keeping double-quoted strings (with `\"` escapes) whole.
fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut w = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => w.push(chars.next().ok_or("dangling escape")?),
                    Some('"') => break,
                    Some(ch) => w.push(ch),
                    None => return Err(format!("unterminated quote in {line:?}")),
                }
            }
        } else {
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() {
                    break;
                }
                w.push(ch);
                chars.next();
            }
        }
        out.push(w);
    }
    Ok(out)
}

fn parse_compare(line: &str) -> Result<Compare, String> {
    let open = line
        .find('(')
        .ok_or_else(|| format!("bad compare {line:?}"))?;
    let close = line
        .find(')')
        .ok_or_else(|| format!("bad compare {line:?}"))?;
    let target = &line[..open];
    let key = words(&line[open + 1..close])?
        .pop()
        .ok_or_else(|| format!("no key in {line:?}"))?;
    let rest = words(&line[close + 1..])?;
    let [op, value] = rest.as_slice() else {
        return Err(format!("expected `op \"value\"` in {line:?}"));
    };
    let result = match op.as_str() {
        "=" | "==" => CompareResult::Equal,
        "!=" => CompareResult::NotEqual,
        ">" => CompareResult::Greater,
        "<" => CompareResult::Less,
        other => return Err(format!("unknown comparison {other:?}")),
    };
    let num = || {
        value
            .parse::<i64>()
            .map_err(|e| format!("{value:?} is not a number: {e}"))
    };
    let (target, union) = match target {
        "value" | "val" => (
            CompareTarget::Value,
            TargetUnion::Value(value.clone().into_bytes()),
        ),
        "version" | "ver" => (CompareTarget::Version, TargetUnion::Version(num()?)),
        "create" | "c" => (CompareTarget::Create, TargetUnion::CreateRevision(num()?)),
        "mod" | "m" => (CompareTarget::Mod, TargetUnion::ModRevision(num()?)),
        "lease" => (CompareTarget::Lease, TargetUnion::Lease(num()?)),
        other => return Err(format!("unknown compare target {other:?}")),
    };
    Ok(Compare {
        result: result as i32,
        target: target as i32,
        key: key.into_bytes(),
        target_union: Some(union),
        range_end: Vec::new(),
    })
}

fn parse_op(line: &str) -> Result<RequestOp, String> {
    let w = words(line)?;
    let request = match w.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["put", k, v] => request_op::Request::RequestPut(PutRequest {
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
            ..Default::default()
        }),
        ["get", k] => request_op::Request::RequestRange(RangeRequest {
            key: k.as_bytes().to_vec(),
            ..Default::default()
        }),
        ["del", k] => request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: k.as_bytes().to_vec(),
            ..Default::default()
        }),
        _ => {
            return Err(format!(
                "unknown operation {line:?} (put K V, get K, del K)"
            ))
        }
    };
    Ok(RequestOp {
        request: Some(request),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etcdctl_format() {
        let t = parse(
            "value(\"a\") = \"x y\"\nmod(\"b\") > \"3\"\n\nput a \"new v\"\nget b\n\ndel a\n",
        )
        .unwrap();
        assert_eq!(t.compare.len(), 2);
        assert_eq!(
            t.compare[0].target_union,
            Some(TargetUnion::Value(b"x y".to_vec()))
        );
        assert_eq!(t.compare[1].result, CompareResult::Greater as i32);
        assert_eq!(t.success.len(), 2);
        assert_eq!(t.failure.len(), 1);
        let Some(request_op::Request::RequestPut(p)) = &t.success[0].request else {
            panic!("expected a put")
        };
        assert_eq!(p.value, b"new v");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("value(\"a\") ~ \"x\"\n").is_err());
        assert!(parse("\n\nfrobnicate a\n").is_err());
        assert!(parse("version(\"a\") = \"x\"\n").is_err());
    }
}
