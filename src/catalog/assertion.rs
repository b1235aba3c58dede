//! Chaos-step assertions: CEL expressions over a run's outcome, such as
//! `probes_failed == 0 && duration_seconds < 120`.
//!
//! The catalog checks them when it loads (they must compile, name only the variables below
//! and give a boolean); the gate evaluates them with [`evaluate`], which binds the same
//! variables with the same types, so an assertion that validates cannot fail for a reason
//! validation could have caught.

use std::collections::HashSet;

use cel::common::ast::{EntryExpr, Expr};
use cel::objects::Value as CelValue;
use cel::{Context, ExecutionError, IdedExpr, Program};

/// The variables an assertion can use, with their CEL types.
pub(crate) const ASSERTION_VARIABLES: [(&str, &str); 7] = [
    ("resilience_score", "double"),
    ("expected_resilience_score", "double"),
    ("faults_passed", "int"),
    ("faults_failed", "int"),
    ("probes_passed", "int"),
    ("probes_failed", "int"),
    ("duration_seconds", "double"),
];

/// What an assertion sees of a finished run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AssertionInput {
    /// The run's resilience score, 0-100.
    pub(crate) resilience_score: f64,
    /// The step's expected resilience score, 0-100.
    pub(crate) expected_resilience_score: f64,
    /// Faults whose verdict passed.
    pub(crate) faults_passed: i64,
    /// Faults whose verdict failed.
    pub(crate) faults_failed: i64,
    /// Probes whose verdict passed.
    pub(crate) probes_passed: i64,
    /// Probes whose verdict failed.
    pub(crate) probes_failed: i64,
    /// How long the run took, in seconds.
    pub(crate) duration_seconds: f64,
}

/// Why an assertion is not usable, or could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AssertionError {
    /// The text is not CEL.
    #[error("does not compile: {0}")]
    Syntax(String),
    /// It names variables that are not bound.
    #[error("unknown variable {names} (variables: {known})", known = known_names())]
    UnknownVariable {
        /// The unknown names, quoted and comma-separated.
        names: String,
    },
    /// It calls functions CEL does not have.
    #[error("unknown function '{0}'")]
    UnknownFunction(String),
    /// Evaluation failed (e.g. comparing a number with text).
    #[error("cannot be evaluated: {0}")]
    Evaluation(String),
    /// It does not give true or false.
    #[error("must give true or false, but gives {0}")]
    NotBoolean(String),
}

fn known_names() -> String {
    ASSERTION_VARIABLES.map(|(name, _)| name).join(", ")
}

/// Compiles `expression` and checks it names only known variables and gives a boolean.
pub(crate) fn compile(expression: &str) -> Result<Program, AssertionError> {
    let program = Program::compile(expression).map_err(|errors| {
        let text = errors
            .errors
            .iter()
            .map(|error| {
                let message = error.msg.trim_start_matches("Syntax error: ");
                format!("{message} (column {})", error.pos.1)
            })
            .collect::<Vec<_>>()
            .join("; ");
        AssertionError::Syntax(text)
    })?;
    let mut bound = HashSet::new();
    comprehension_variables(program.expression(), &mut bound);
    let references = program.references();
    let mut unknown: Vec<&str> = references
        .variables()
        .into_iter()
        .filter(|name| !bound.contains(*name))
        .filter(|name| !ASSERTION_VARIABLES.iter().any(|(known, _)| known == name))
        .collect();
    unknown.sort_unstable();
    if !unknown.is_empty() {
        let names = unknown
            .iter()
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(AssertionError::UnknownVariable { names });
    }
    // Sample values, none zero, so a type error shows up and a division does not fail.
    let sample = AssertionInput {
        resilience_score: 90.0,
        expected_resilience_score: 80.0,
        faults_passed: 2,
        faults_failed: 1,
        probes_passed: 3,
        probes_failed: 1,
        duration_seconds: 42.5,
    };
    evaluate(&program, &sample)?;
    Ok(program)
}

/// Evaluates a compiled assertion for one run.
pub(crate) fn evaluate(program: &Program, input: &AssertionInput) -> Result<bool, AssertionError> {
    let mut context = Context::default();
    context.add_variable_from_value("resilience_score", input.resilience_score);
    context.add_variable_from_value("expected_resilience_score", input.expected_resilience_score);
    context.add_variable_from_value("faults_passed", input.faults_passed);
    context.add_variable_from_value("faults_failed", input.faults_failed);
    context.add_variable_from_value("probes_passed", input.probes_passed);
    context.add_variable_from_value("probes_failed", input.probes_failed);
    context.add_variable_from_value("duration_seconds", input.duration_seconds);
    match program.execute(&context) {
        Ok(CelValue::Bool(result)) => Ok(result),
        Ok(other) => Err(AssertionError::NotBoolean(format!("{other:?}"))),
        Err(ExecutionError::UndeclaredReference(name)) => {
            Err(AssertionError::UnknownFunction(name.to_string()))
        }
        Err(error) => Err(AssertionError::Evaluation(error.to_string())),
    }
}

/// Names bound by macros such as `all(x, ...)`, which are not free variables.
fn comprehension_variables(expr: &IdedExpr, bound: &mut HashSet<String>) {
    match &expr.expr {
        Expr::Comprehension(comprehension) => {
            bound.insert(comprehension.iter_var.clone());
            bound.insert(comprehension.accu_var.clone());
            if let Some(second) = &comprehension.iter_var2 {
                bound.insert(second.clone());
            }
            for part in [
                &comprehension.iter_range,
                &comprehension.accu_init,
                &comprehension.loop_cond,
                &comprehension.loop_step,
                &comprehension.result,
            ] {
                comprehension_variables(part, bound);
            }
        }
        Expr::Call(call) => {
            call.target
                .iter()
                .for_each(|t| comprehension_variables(t, bound));
            call.args
                .iter()
                .for_each(|a| comprehension_variables(a, bound));
        }
        Expr::List(list) => list
            .elements
            .iter()
            .for_each(|e| comprehension_variables(e, bound)),
        Expr::Map(map) => map.entries.iter().for_each(|entry| match &entry.expr {
            EntryExpr::StructField(field) => comprehension_variables(&field.value, bound),
            EntryExpr::MapEntry(pair) => {
                comprehension_variables(&pair.key, bound);
                comprehension_variables(&pair.value, bound);
            }
        }),
        Expr::Struct(object) => object.entries.iter().for_each(|entry| match &entry.expr {
            EntryExpr::StructField(field) => comprehension_variables(&field.value, bound),
            EntryExpr::MapEntry(pair) => {
                comprehension_variables(&pair.key, bound);
                comprehension_variables(&pair.value, bound);
            }
        }),
        Expr::Select(select) => comprehension_variables(&select.operand, bound),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_assertions_over_the_run() {
        for text in [
            "probes_failed == 0",
            "resilience_score >= expected_resilience_score && duration_seconds < 120.0",
            "faults_failed == 0 || resilience_score >= 90.0",
            "[probes_failed, faults_failed].all(n, n == 0)",
        ] {
            assert!(compile(text).is_ok(), "{text}: {:?}", compile(text).err());
        }
    }

    #[test]
    fn refuses_what_cannot_run() {
        let unknown = compile("probes_failed == 0 && latency_ms < 300").unwrap_err();
        assert!(
            unknown
                .to_string()
                .starts_with("unknown variable 'latency_ms'"),
            "{unknown}"
        );
        assert!(matches!(
            compile("probes_failed =="),
            Err(AssertionError::Syntax(_))
        ));
        assert!(matches!(
            compile("probes_failed + 1"),
            Err(AssertionError::NotBoolean(_))
        ));
        assert!(matches!(
            compile("nosuch(probes_failed)"),
            Err(AssertionError::UnknownFunction(_))
        ));
    }

    #[test]
    fn evaluates_with_the_run_values() {
        let program = compile("probes_failed == 0 && resilience_score >= 80.0").unwrap();
        let mut input = AssertionInput {
            resilience_score: 100.0,
            expected_resilience_score: 80.0,
            faults_passed: 1,
            faults_failed: 0,
            probes_passed: 2,
            probes_failed: 0,
            duration_seconds: 3.0,
        };
        assert_eq!(evaluate(&program, &input), Ok(true));
        input.probes_failed = 1;
        assert_eq!(evaluate(&program, &input), Ok(false));
    }
}
