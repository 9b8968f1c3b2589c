-- Step 7's first prediction task: an emergency room visit within a year of an outpatient visit.
-- outcome_concepts: 9203
--
-- Target cohort: every person with an outpatient visit (visit_concept_id 9202) in 2010-2016; the
-- index (prediction) date is the day after their first such visit, so that visit is part of the
-- history the model sees and everything from the index date on is not.
-- Outcome: an emergency room visit (9203) in the 365 days from the index date.
--
-- A cohort SQL for predict.py is one SELECT (a WITH ... SELECT is fine) with these columns:
--   subject_id         the person_id
--   cohort_start_date  the index date: the model sees only events strictly before it
--   cohort_end_date    the last day of the time at risk
--   outcome_date       the first outcome between cohort_start_date and cohort_end_date, else NULL
-- @cdm_schema is replaced by predict.py's --cdm-schema (default cdm), as in OHDSI's SqlRender.
-- The `outcome_concepts:` line names the tokens zero-shot looks for in sampled futures; a line
-- `zero_shot: off, <why>` leaves zero-shot out for a task.
-- One row per person and index date; predict.py writes the rows into an OHDSI `cohort` table.
-- Set-based, so its cost grows with the CDM, not with its square: the outcome is a LEFT JOIN of the
-- events on person_id and the time at risk, then MIN per person (GROUP BY). A subquery per cohort row
-- ((SELECT MIN(...) WHERE er.person_id = index_visit.person_id)) reads the events once per person.
WITH index_visit AS (
    SELECT person_id, MIN(visit_start_date) AS visit_date
    FROM @cdm_schema.visit_occurrence
    WHERE visit_concept_id = 9202
      AND visit_start_date BETWEEN DATE '2010-01-01' AND DATE '2016-12-31'
    GROUP BY person_id
)
SELECT index_visit.person_id AS subject_id,
       index_visit.visit_date + 1 AS cohort_start_date,
       index_visit.visit_date + 365 AS cohort_end_date,
       MIN(er.visit_start_date) AS outcome_date
FROM index_visit
LEFT JOIN @cdm_schema.visit_occurrence AS er
       ON er.person_id = index_visit.person_id
      AND er.visit_concept_id = 9203
      AND er.visit_start_date BETWEEN index_visit.visit_date + 1 AND index_visit.visit_date + 365
GROUP BY index_visit.person_id, index_visit.visit_date
